"""The progress record of a step that runs child runs (foreach, loop, subworkflow), tagged by ``kind``.

The step's runtime in ``scheduler/child_steps/`` owns and mutates its record (so these Structs are not
frozen); the scheduler stores it as JSON in ``step_run.progress`` with the keys it always had, and the
trigger shows counts from it. A stored record this version cannot read exactly becomes
``OtherProgress``, which keeps the raw object and is written back unchanged (no runtime claims it).
"""

from __future__ import annotations

from typing import Any, TypeAlias

import msgspec
from msgspec import UNSET, UnsetType

from legato.core.tagged import decode_tagged


class _Progress(msgspec.Struct, kw_only=True, tag_field="kind", forbid_unknown_fields=True):
    """Base of the known progress records: tagged by ``kind``, strict on decode."""


class ForeachProgress(_Progress, kw_only=True, tag="foreach"):
    """A foreach: how many items, which to start next, the iterations per status, and the live
    children over a subworkflow (iteration -> [workflow, run id])."""

    total: int
    next: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    ignored: int = 0
    concurrency: int
    on_failure: str
    as_: str = msgspec.field(name="as")  # the name an inline iteration sees its item under
    retry: list[int] = msgspec.field(default_factory=list)  # failed iterations to run again, in order
    failed_items: list[int] = msgspec.field(default_factory=list)
    children: dict[str, list[str]] = msgspec.field(default_factory=dict)
    run: int = 1  # the step's run number (a restart re-runs the failed iterations as the next)
    stopping: bool | UnsetType = UNSET  # set once the step stops its iterations (on_failure: fail)


class LoopProgress(_Progress, kw_only=True, tag="loop"):
    """A loop: the next iteration's index, the most it may run, and the last iteration's outputs."""

    index: int
    max: int
    last: dict[str, Any] = msgspec.field(default_factory=dict)


class SubworkflowProgress(_Progress, kw_only=True, tag="subworkflow"):
    """A subworkflow: the workflow and the id of its child run."""

    workflow: str
    child: str


class OtherProgress:
    """A stored progress record this version does not know: kept as it was (a plain class, not a
    Struct, for the same reason as ``legato.core.reasons.OtherReason``)."""

    __slots__ = ("kind", "raw")

    def __init__(self, kind: str | None, raw: dict[str, Any]) -> None:
        self.kind = kind
        self.raw = raw

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OtherProgress) and (self.kind, self.raw) == (other.kind, other.raw)

    __hash__ = None  # type: ignore[assignment]  # holds a dict

    def __repr__(self) -> str:
        return f"OtherProgress(kind={self.kind!r}, raw={self.raw!r})"


KnownProgress: TypeAlias = ForeachProgress | LoopProgress | SubworkflowProgress
Progress: TypeAlias = KnownProgress | OtherProgress


def kind_of(progress: Progress) -> str | None:
    """The step type the record belongs to (``foreach``, ``loop``, ``subworkflow``)."""
    if isinstance(progress, OtherProgress):
        return progress.kind
    return str(progress.__struct_config__.tag)


def encode_progress(progress: Progress | None) -> dict[str, Any] | None:
    """The JSON object stored for ``progress``, or None."""
    if progress is None:
        return None
    if isinstance(progress, OtherProgress):
        return progress.raw
    out: dict[str, Any] = msgspec.to_builtins(progress)
    return out


def decode_progress(value: object) -> Progress | None:
    """A stored progress record as its Struct; one this version cannot read exactly becomes
    ``OtherProgress`` and never raises."""
    if value is None:
        return None
    if not isinstance(value, dict):
        return OtherProgress(None, {"value": value})
    decoded: Progress = decode_tagged(value, KnownProgress, OtherProgress)
    return decoded
