"""Limits on one evaluation of an SEL expression."""

from __future__ import annotations

import msgspec


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Caps applied to one evaluation.

    A *step* is one unit of work: one node of the expression evaluated, one element of a
    collection visited or built, or 64 characters of a string processed or built. Work is charged
    before it is done, so the budget also bounds the memory an evaluation can allocate
    (roughly ``max_steps * 64`` characters plus ``max_steps`` elements).
    """

    max_steps: int = 100_000
    """Work budget of one evaluation."""
    max_string: int = 1_000_000
    """Longest string (characters) an expression may build."""
    max_collection: int = 100_000
    """Most items in a list, map or set an expression may build."""
    max_depth: int = 64
    """Deepest nesting of the expression's syntax tree and of the data it walks or builds."""
    max_int_bits: int = 4096
    """Largest integer magnitude, in bits, an expression may produce."""
    max_source: int = 20_000
    """Longest expression source (characters) accepted by the compiler."""

    def __post_init__(self) -> None:
        # the interpreter's small-int fast path relies on at least 64 bits
        if self.max_int_bits < 64:
            raise ValueError("max_int_bits must be >= 64")
        for name in ("max_steps", "max_string", "max_collection", "max_depth", "max_source"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


DEFAULT_LIMITS = Limits()
