"""The state of one evaluation: its namespace, comprehension variables, and the work budget."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NoReturn

from legato.sel.errors import SelLimitError
from legato.sel.limits import Limits

CHARS_PER_STEP = 64
"""A step pays for this many characters of string work."""


class Ctx:
    """Per-evaluation state, passed to every compiled node; cheap to create (one per evaluation)."""

    __slots__ = ("_clock", "env", "int_limit", "limits", "max_steps", "now", "slots", "steps")

    def __init__(self, env: Mapping[str, Any], limits: Limits, now: datetime | None, nslots: int) -> None:
        self.env = env
        self.limits = limits
        self.max_steps = limits.max_steps
        self.steps = 0
        self.slots: list[Any] = [None] * nslots if nslots else []
        self.int_limit = 1 << limits.max_int_bits
        self.now = now
        self._clock: datetime | None = None

    def charge(self, n: int) -> None:
        """Pay ``n`` steps before doing the work they stand for."""
        self.steps += n
        if self.steps > self.max_steps:
            self.exhausted()

    def charge_chars(self, n: int) -> None:
        """Pay for processing or building ``n`` characters."""
        self.steps += 1 + n // CHARS_PER_STEP
        if self.steps > self.max_steps:
            self.exhausted()

    def exhausted(self) -> NoReturn:
        raise SelLimitError(f"budget of {self.max_steps} steps exceeded", limit="max_steps")

    def check_string(self, length: int) -> None:
        """Refuse to build a string longer than the cap, then pay for it."""
        if length > self.limits.max_string:
            raise SelLimitError(
                f"string of {length} characters exceeds the limit of {self.limits.max_string}",
                limit="max_string",
            )
        self.charge_chars(length)

    def check_collection(self, size: int) -> None:
        """Refuse to build a collection larger than the cap, then pay for it."""
        if size > self.limits.max_collection:
            raise SelLimitError(
                f"collection of {size} items exceeds the limit of {self.limits.max_collection}",
                limit="max_collection",
            )
        self.charge(size)

    def check_int(self, value: int) -> int:
        """Refuse integers beyond ``max_int_bits``; returns the value."""
        if value >= self.int_limit or value <= -self.int_limit:
            raise SelLimitError(
                f"integer of {value.bit_length()} bits exceeds the limit of {self.limits.max_int_bits} bits",
                limit="max_int_bits",
            )
        return value

    def check_depth(self, depth: int) -> None:
        if depth > self.limits.max_depth:
            raise SelLimitError(f"data nested deeper than {self.limits.max_depth} levels", limit="max_depth")

    def clock(self) -> datetime:
        """The evaluation's "now": the fixed clock when one was given, else read once per evaluation."""
        if self._clock is None:
            self._clock = self.now if self.now is not None else datetime.now(UTC)
        return self._clock
