"""What a child step decides: the records a runtime returns and the engine applies, in order.

A runtime never calls the engine; it reads its context, updates its own progress record and returns an
``Outcome``. Each decision is one effect the engine knows how to apply (``RunEngine.apply_outcome``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from legato.core.progress import Progress
from legato.protocol.messages import StartRun


@dataclass(frozen=True, slots=True)
class Note:
    """A timeline entry on the step."""

    event: str
    message: str
    details: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class StartInline:
    """Start a child run of the step's own body (a foreach or loop iteration) in this actor."""

    key: str
    index: int
    typed_params: dict[str, Any]
    trigger_extra: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StartRemote:
    """Start a child run of another workflow (maybe this one) through that workflow's actor."""

    start: StartRun


@dataclass(frozen=True, slots=True)
class StopChildren:
    """Stop the step's live child runs (inline ones at once, others through their actors)."""

    why: str


@dataclass(frozen=True, slots=True)
class Collect:
    """Every iteration ended: collect their outputs from Postgres, then call the runtime's ``complete``."""


@dataclass(frozen=True, slots=True)
class Succeed:
    """The step succeeded with ``outputs``; its ``publish_signals`` are sent first when asked."""

    outputs: dict[str, Any]
    message: str
    publish_signals: bool = True


@dataclass(frozen=True, slots=True)
class Fail:
    """The step failed (then its ``on_failure`` applies); its live children are stopped when asked."""

    error: str
    stop_children: bool = True
    outputs: dict[str, Any] | None = None


Decision = Note | StartInline | StartRemote | StopChildren | Collect | Succeed | Fail


@dataclass(frozen=True, slots=True)
class Outcome:
    """The decisions of one call, applied in order.

    ``progress``, when set, becomes the step's progress record first. With ``resume``, the engine asks
    the runtime again (``resume``) after applying the decisions, as long as the step still runs: a
    foreach starts its iterations one at a time, so an iteration that ends while it starts (a failed
    param, an empty loop) is joined before the next one is decided.
    """

    decisions: tuple[Decision, ...] = field(default_factory=tuple)
    progress: Progress | None = None
    resume: bool = False

    @property
    def empty(self) -> bool:
        return not self.decisions and self.progress is None and not self.resume


NOTHING = Outcome()


def outcome(*decisions: Decision, progress: Progress | None = None, resume: bool = False) -> Outcome:
    """An ``Outcome`` of these decisions."""
    return Outcome(decisions=decisions, progress=progress, resume=resume)
