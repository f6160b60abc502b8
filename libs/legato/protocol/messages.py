"""Message types. Unknown fields are ignored (newer senders stay readable); unknown kinds do not decode
and are dead-lettered by the consumer loop."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

PROTOCOL_VERSION = 1

JSONValue = Any  # a JSON value (param and output values cross the wire as JSON)


class _Msg(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind"):
    v: int = PROTOCOL_VERSION


# --- LEGATO_TRIGGERS -------------------------------------------------------------------------------


class TriggerInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What started a run: ``api``, ``cron``, ``signal``, ``subworkflow``, ``foreach``, ``backfill``."""

    kind: str
    id: str | None = None
    by: str | None = None
    details: dict[str, JSONValue] = {}


class ParentRef(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The step (and iteration) of a parent run that started this run as a child."""

    instance_id: str
    workflow_id: str
    step_id: str
    iteration: int | None = None


class StartRun(_Msg, tag="start", frozen=True, kw_only=True):
    """Create (once per trigger key) and admit a run of a workflow."""

    workflow_id: str
    trigger_key: str
    instance_id: str
    trigger: TriggerInfo
    params: dict[str, JSONValue] = {}
    version: int | None = None  # pinned definition version; None = the active one
    requested_at: float = 0.0
    parent: ParentRef | None = None
    apply_run_strategy: bool = True


ActionKind = Literal["stop", "kill", "restart", "unblock", "skip_step", "stop_all", "kill_all", "unblock_all"]
"""What an operator asks of a run (or, ``*_all``, of every run of a workflow)."""


class ActionRequest(_Msg, tag="action", frozen=True, kw_only=True):
    """An operator action, applied by the workflow's actor (idempotent by ``action_id``)."""

    action_id: str
    workflow_id: str
    action: ActionKind
    instance_id: str | None = None
    step_id: str | None = None
    reason: str = ""
    actor: str = ""
    requested_at: float = 0.0


class WorkflowChanged(_Msg, tag="workflow_changed", frozen=True, kw_only=True):
    """The definition, activation or run strategy changed: re-evaluate the queue."""

    workflow_id: str
    change: str = ""


class ChildFinished(_Msg, tag="child_finished", frozen=True, kw_only=True):
    """A child run (subworkflow, or foreach iteration over a subworkflow) ended (child -> parent's actor)."""

    workflow_id: str  # the parent's workflow (routing)
    parent_instance_id: str
    parent_step_id: str
    iteration: int | None = None
    child_instance_id: str
    child_workflow_id: str
    status: str
    outputs: dict[str, JSONValue] = {}
    error: str | None = None


TriggerMessage = StartRun | ActionRequest | WorkflowChanged | ChildFinished


# --- LEGATO_EVENTS ---------------------------------------------------------------------------------


class AttemptStarted(_Msg, tag="attempt_started", frozen=True, kw_only=True):
    attempt_id: str
    workflow_id: str
    instance_id: str
    step_id: str
    executor: str
    started_at: float


Outcome = Literal["succeeded", "failed", "timed_out", "cancelled", "platform_error"]


class AttemptFinished(_Msg, tag="attempt_finished", frozen=True, kw_only=True):
    attempt_id: str
    workflow_id: str
    instance_id: str
    step_id: str
    outcome: Outcome
    executor: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    outputs: dict[str, JSONValue] = {}
    error: str | None = None
    exit_code: int | None = None
    log_tail: str | None = None


class SignalWaitSatisfied(_Msg, tag="signal_wait_satisfied", frozen=True, kw_only=True):
    """The signal router found a signal for a step's ``wait_for_signals`` entry (router -> scheduler)."""

    wait_id: str
    workflow_id: str
    instance_id: str
    step_id: str
    name: str
    signal_id: str
    fields: dict[str, JSONValue] = {}


EventMessage = AttemptStarted | AttemptFinished | SignalWaitSatisfied


# --- LEGATO_SIGNALS (internal subjects, never a user signal name) ----------------------------------


class SignalWaitRegistered(_Msg, tag="signal_wait_registered", frozen=True, kw_only=True):
    """A step started waiting for a signal (scheduler -> router, on ``legato.signal._legato.wait``).

    The router alone writes ``signal_wait``: it stores the wait (once, by ``wait_id``), satisfies it at
    once from the signals it has stored, and keeps matching new ones until one satisfies it.
    """

    wait_id: str
    workflow_id: str
    instance_id: str
    step_id: str
    name: str
    match: dict[str, JSONValue]  # field -> {"op", "value"}, the value evaluated for the run


class SignalWaitsCancelled(_Msg, tag="signal_waits_cancelled", frozen=True, kw_only=True):
    """A run that may wait for signals ended: the router cancels its open waits (scheduler -> router)."""

    workflow_id: str
    instance_id: str


SignalWaitMessage = SignalWaitRegistered | SignalWaitsCancelled


# --- LEGATO_WORK -----------------------------------------------------------------------------------


class WorkItem(_Msg, tag="work", frozen=True, kw_only=True):
    """One step attempt to execute; the result goes to ``reply_subject``."""

    attempt_id: str
    workflow_id: str
    instance_id: str
    step_id: str
    attempt: int
    step_type: str
    config: dict[str, JSONValue] = {}
    params: dict[str, JSONValue] = {}
    timeout: float | None = None
    reply_subject: str
    dispatched_at: float = 0.0


# --- LEGATO_DEADLETTERS ----------------------------------------------------------------------------


class DeadLetterReport(_Msg, tag="dead_letter", frozen=True, kw_only=True):
    """A message a database-less service (the executor) gave up on, for a stateful service to store.

    Published on ``legato.deadletter.<service>``; whoever has Postgres writes it to ``dead_letter``.
    """

    service: str
    stream: str
    consumer: str
    subject: str
    stream_seq: int
    msg_id: str | None = None
    headers: dict[str, str] = {}
    payload: bytes = b""
    error: str
    deliveries: int


# --- core NATS -------------------------------------------------------------------------------------


class CancelAttempt(_Msg, tag="cancel", frozen=True, kw_only=True):
    attempt_id: str
    reason: str = ""
    force: bool = False  # kill at once instead of a graceful stop


class ExecutorHeartbeat(_Msg, tag="executor_heartbeat", frozen=True, kw_only=True):
    """An executor is alive and runs these attempts (executor -> schedulers, every ``interval`` s).

    ``boot`` names one process lifetime: an executor restarted under the same id is a new boot, and the
    attempts its previous boot ran are not running any more.
    """

    executor: str
    boot: str
    attempts: list[str] = []
    interval: float = 1.0
    at: float = 0.0


_trigger_decoder: msgspec.json.Decoder[TriggerMessage] = msgspec.json.Decoder(TriggerMessage)
_event_decoder: msgspec.json.Decoder[EventMessage] = msgspec.json.Decoder(EventMessage)
_work_decoder: msgspec.json.Decoder[WorkItem] = msgspec.json.Decoder(WorkItem)
_heartbeat_decoder: msgspec.json.Decoder[ExecutorHeartbeat] = msgspec.json.Decoder(ExecutorHeartbeat)
_dead_letter_decoder: msgspec.json.Decoder[DeadLetterReport] = msgspec.json.Decoder(DeadLetterReport)
_encoder = msgspec.json.Encoder()


def encode(msg: msgspec.Struct) -> bytes:
    return _encoder.encode(msg)


def decode_trigger(data: bytes) -> TriggerMessage:
    return _trigger_decoder.decode(data)


def decode_event(data: bytes) -> EventMessage:
    return _event_decoder.decode(data)


def decode_work(data: bytes) -> WorkItem:
    return _work_decoder.decode(data)


def decode_heartbeat(data: bytes) -> ExecutorHeartbeat:
    return _heartbeat_decoder.decode(data)


TRIGGER_DECODER = _trigger_decoder
EVENT_DECODER = _event_decoder
WORK_DECODER = _work_decoder
DEAD_LETTER_DECODER = _dead_letter_decoder
