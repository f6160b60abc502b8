"""Why a run or a step waits, was skipped or was stopped: one tagged Struct per reason code.

The scheduler builds these, keeps them typed in its state and stores them as JSON in the ``reason``
columns of ``workflow_instance`` and ``step_run``; the trigger builds the queue reasons it explains
live and the cron skips; the trigger, client and CLI decode a stored or received reason once with
``decode_reason`` and dispatch on its type. The JSON keeps the shape it had when reasons were plain
dicts: ``{"code": <code>, <field>: ...}``. A field typed ``X | UnsetType`` is one that only some
builders set; left ``UNSET`` it is absent from the JSON, as the key was absent from the dict.

Reading is tolerant: a row written by another version (an unknown code, a field this version does not
know, a value of another type) decodes to ``OtherReason`` holding the raw object, and encodes back
to exactly that object, so a read never fails and never drops what was stored.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import msgspec
from msgspec import UNSET, UnsetType

from legato.core.tagged import decode_tagged


class _Reason(msgspec.Struct, frozen=True, kw_only=True, tag_field="code", forbid_unknown_fields=True):
    """Base of every known reason: tagged by ``code``, strict on decode (see ``decode_reason``)."""


class _QueuePosition(_Reason, frozen=True, kw_only=True):
    """Where a queued run stands, as the trigger explains it live (absent from what the scheduler
    stores)."""

    strategy: str | UnsetType = UNSET
    position: int | UnsetType = UNSET
    behind: str | UnsetType | None = UNSET
    limit: int | UnsetType = UNSET
    held_by: list[str] | UnsetType = UNSET


# ---------------------------------------------------------------- runs waiting in the queue


class Queued(_QueuePosition, frozen=True, kw_only=True, tag="queued"):
    """The run waits for its workflow's run strategy to give it a slot."""

    why: str | UnsetType = UNSET  # "restarted": put back at the front of the queue
    message: str | UnsetType = UNSET


class Paused(_QueuePosition, frozen=True, kw_only=True, tag="paused"):
    """The workflow is paused (or its ``max_concurrency`` is 0); also a cron fire skipped meanwhile."""

    why: str | UnsetType = UNSET
    by: str | UnsetType | None = UNSET
    paused_by: str | UnsetType | None = UNSET
    message: str | UnsetType = UNSET


class Blocked(_QueuePosition, frozen=True, kw_only=True, tag="blocked"):
    """A failed run blocks the workflow (``strict_sequential``)."""

    by: str | UnsetType | None = UNSET
    blocked_by: str | UnsetType | None = UNSET
    blocked_since: str | UnsetType | None = UNSET
    message: str | UnsetType = UNSET


class WaitingForStop(_QueuePosition, frozen=True, kw_only=True, tag="waiting_for_stop"):
    """A slot looks free but a stopped run's attempts have not confirmed they stopped yet."""

    runs: list[str]
    attempts: list[str]
    until: str | None
    message: str


# ---------------------------------------------------------------- runs that ended or never ran


class BadParams(_Reason, frozen=True, kw_only=True, tag="bad_params"):
    """The run's parameters did not validate; it failed before it started."""


class UnknownVersion(_Reason, frozen=True, kw_only=True, tag="unknown_version"):
    """The run asked for a workflow version that does not exist."""


class Inactive(_Reason, frozen=True, kw_only=True, tag="inactive"):
    """The workflow was inactive when the run arrived."""


class FirstOnly(_Reason, frozen=True, kw_only=True, tag="first_only"):
    """Skipped under ``first_only``: another run holds the slot."""

    running: str


class Superseded(_Reason, frozen=True, kw_only=True, tag="superseded"):
    """Stopped or skipped under ``last_only``: a newer run took its place."""

    by: str


class StepFailed(_Reason, frozen=True, kw_only=True, tag="step_failed"):
    """The run failed because these steps failed."""

    steps: list[str]


class RunTimeout(_Reason, frozen=True, kw_only=True, tag="run_timeout"):
    """The run ran out of time."""


class ParentStopped(_Reason, frozen=True, kw_only=True, tag="parent_stopped"):
    """A child run stopped because its parent run stopped."""

    why: str


class Operator(_Reason, frozen=True, kw_only=True, tag="operator"):
    """An operator stopped or killed the run."""

    action: str
    by: str
    why: str


class Missed(_Reason, frozen=True, kw_only=True, tag="missed"):
    """A cron fire recorded as skipped by its catch-up policy."""

    policy: str
    late_seconds: int
    message: str


# ---------------------------------------------------------------- steps waiting, skipped or stopped


class UpstreamFailed(_Reason, frozen=True, kw_only=True, tag="upstream_failed"):
    """Skipped: these predecessors failed."""

    steps: list[str]


class ConditionFalse(_Reason, frozen=True, kw_only=True, tag="condition_false"):
    """Skipped: the conditions of the edges from these steps were false."""

    from_: list[str] = msgspec.field(name="from")


class WaitingForDispatchSlot(_Reason, frozen=True, kw_only=True, tag="waiting_for_dispatch_slot"):
    """Held back: the workflow already has its dispatch window of attempts waiting in ``queue``."""

    queue: str
    limit: int
    message: str


class RetryBackoff(_Reason, frozen=True, kw_only=True, tag="retry_backoff"):
    """Retrying: retry ``retry`` of ``of`` for failures of ``kind``, due at ``at``."""

    kind: str
    retry: int
    of: int
    at: str


class Cancelled(_Reason, frozen=True, kw_only=True, tag="cancelled"):
    """The step stopped with its run."""

    why: str


class WaitingForSignals(_Reason, frozen=True, kw_only=True, tag="waiting_for_signals"):
    """The step waits for the ``missing`` ones of its ``signals``."""

    signals: list[str]
    missing: list[str]
    message: str


class WaitingForStepConcurrency(_Reason, frozen=True, kw_only=True, tag="waiting_for_step_concurrency"):
    """The step waits for a slot under the workflow's ``step_concurrency``."""

    limit: int
    in_use: int
    message: str


class WaitingForPermit(_Reason, frozen=True, kw_only=True, tag="waiting_for_permit"):
    """The step waits for a permit of a limited concurrency tag (``held_by``: filled in live by the
    trigger)."""

    tag: str
    limit: int | None
    in_use: int
    message: str
    held_by: list[str] | UnsetType = UNSET


class SkippedByOperator(_Reason, frozen=True, kw_only=True, tag="skipped_by_operator"):
    """An operator skipped the step: its successors go on without it."""

    by: str
    why: str


class Restart(_Reason, frozen=True, kw_only=True, tag="restart"):
    """The step was reset to run again in restarted run number ``run``."""

    run: int


class OtherReason:
    """A stored reason this version does not know (another version wrote it): kept as it was.

    Not a Struct on purpose: msgspec would encode one as ``{"code", "raw"}``; as a plain class it goes
    through an encoder's ``enc_hook`` (``legato.protocol.replies.reply_enc_hook``), which writes ``raw``.
    """

    __slots__ = ("code", "raw")

    def __init__(self, code: str | None, raw: dict[str, Any]) -> None:
        self.code = code
        self.raw = raw

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OtherReason) and (self.code, self.raw) == (other.code, other.raw)

    __hash__ = None  # type: ignore[assignment]  # holds a dict

    def __repr__(self) -> str:
        return f"OtherReason(code={self.code!r}, raw={self.raw!r})"


KnownReason: TypeAlias = (
    Queued
    | Paused
    | Blocked
    | WaitingForStop
    | BadParams
    | UnknownVersion
    | Inactive
    | FirstOnly
    | Superseded
    | StepFailed
    | RunTimeout
    | ParentStopped
    | Operator
    | Missed
    | UpstreamFailed
    | ConditionFalse
    | WaitingForDispatchSlot
    | RetryBackoff
    | Cancelled
    | WaitingForSignals
    | WaitingForStepConcurrency
    | WaitingForPermit
    | SkippedByOperator
    | Restart
)
Reason: TypeAlias = KnownReason | OtherReason

# Waits that a permit ends (the scheduler's FIFO among steps waiting for a slot).
PERMIT_WAITS = (WaitingForStepConcurrency, WaitingForPermit)


def code_of(reason: Reason) -> str | None:
    """The reason's code (``None`` only for a stored object without one)."""
    if isinstance(reason, OtherReason):
        return reason.code
    return str(reason.__struct_config__.tag)


def message_of(reason: Reason) -> str | None:
    """The reason in words, when its builder wrote one."""
    if isinstance(reason, OtherReason):
        message = reason.raw.get("message")
        return str(message) if message else None
    message = getattr(reason, "message", UNSET)
    return message if isinstance(message, str) and message else None


def encode_reason(reason: Reason | None) -> dict[str, Any] | None:
    """The JSON object stored and sent for ``reason`` (``{"code": ..., ...}``), or None."""
    if reason is None:
        return None
    if isinstance(reason, OtherReason):
        return reason.raw
    out: dict[str, Any] = msgspec.to_builtins(reason)
    return out


def decode_reason(value: object) -> Reason | None:
    """A stored or received reason as its Struct; anything this version cannot read exactly (unknown
    code, unknown field, wrong type, not an object) becomes ``OtherReason`` and never raises."""
    if value is None:
        return None
    if not isinstance(value, dict):
        return OtherReason(None, {"message": str(value)})
    decoded: Reason = decode_tagged(value, KnownReason, OtherReason)
    return decoded
