"""Typed replies of the request/reply API (after ``nats.micro``'s ``ServiceInfo``/``EndpointStats``).

The trigger returns these Structs from its endpoints and encodes them inside ``{"result": …}``; the
client decodes the same Structs, so a caller reads ``reply.instance_id``, not ``reply["instance_id"]``.
The JSON is the one the API always sent: the field names are the wire names. Replies do not forbid
unknown fields, so a newer trigger may add one without breaking an older client.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, get_args

import msgspec
from msgspec import UNSET, UnsetType

from legato.core.model import RunStrategyType
from legato.core.progress import OtherProgress
from legato.core.reasons import KnownReason, OtherReason, Reason, decode_reason
from legato.core.statuses import InstanceStatus


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every typed reply."""


class StartReply(Reply, frozen=True, kw_only=True):
    """``instance.start``: the run a start request names (new, or the one the same request made)."""

    instance_id: str
    """The run's id, derived from the workflow and the request id (the same request, the same run)."""
    workflow_id: str
    status: InstanceStatus
    """``pending`` for a new start (the scheduler creates the run); the run's status for a duplicate."""
    duplicate: bool
    """True when this request id had already started this run."""


class ActionAccepted(Reply, frozen=True, kw_only=True):
    """An operator action (stop, kill, restart, unblock, skip a step; on a run or a whole workflow),
    accepted and queued for the scheduler, which applies it and records the result on the run."""

    accepted: bool = True
    action_id: str
    """The action's id (the request id when one was given): sending it again is one action."""
    action: str
    """What the scheduler is asked to do: ``stop``, ``kill``, ``restart``, ``unblock``, ``skip_step``,
    ``stop_all``, ``kill_all``, ``unblock_all``."""
    workflow_id: str
    instance_id: str | None
    """The run acted on; None for an action on the whole workflow."""


class WorkflowValidated(Reply, frozen=True, kw_only=True):
    """``workflow.validate``: the definition parses and compiles (an invalid one is an error reply)."""

    workflow_id: str
    valid: bool


class WorkflowPushed(Reply, frozen=True, kw_only=True):
    """``workflow.push``: the version a definition is stored as."""

    workflow_id: str
    version: int
    """The version of this definition: a new one, or the existing version with the same digest."""
    created: bool
    """False when the definition was already stored (pushing it again changes nothing)."""
    active_version: int
    active: bool
    digest: str
    """Digest of the normalised definition."""


class WorkflowSummary(Reply, frozen=True, kw_only=True):
    """A workflow's row: activation, run strategy, queue counters (``workflow.activate``,
    ``workflow.deactivate``, ``workflow.set_run_strategy``; also the head of ``workflow.get``)."""

    workflow_id: str
    active: bool
    active_version: int
    latest_version: int
    run_strategy: RunStrategyType
    max_concurrency: int
    strategy_source: str
    """Where the strategy comes from: ``definition`` or ``api`` (set by an operator)."""
    paused: bool
    blocked_by: str | None
    """The failed run that blocks a strict_sequential workflow's queue."""
    blocked_since: str | None
    running: int
    """Runs running now (under the run strategy)."""
    queued: int
    """Runs queued now."""
    updated_at: str
    archived_at: str | None


class SignalSent(Reply, frozen=True, kw_only=True):
    """``signal.send``: the signal, stored by JetStream before the reply."""

    name: str
    id: str
    """The signal's id (its Nats-Msg-Id): the same id twice is one signal."""
    stream_seq: int
    duplicate: bool
    """True when a signal with this id was already stored."""


R = TypeVar("R", bound=Reply)


# ---------------------------------------------------------------- reasons and progress inside replies
#
# A reason is the tagged union of ``legato.core.reasons`` plus ``OtherReason`` (a code this version does
# not know), and a step's progress one of the view Structs below plus ``OtherProgress``. msgspec decodes
# a union of tagged Structs but not one with a fallback, so these fields are declared with a marker
# class that every member is registered under: the decoder hands the raw object to ``reply_dec_hook``,
# which decodes it tolerantly (never failing on what another version wrote), and the encoder hands the
# fallbacks to ``reply_enc_hook``, which writes back the object as it was. Type checkers see the union.


class _ReasonField(abc.ABC):  # noqa: B024 - a marker: msgspec checks decoded values against it
    """A reason inside a reply (see the comment above)."""


class _ProgressField(abc.ABC):  # noqa: B024
    """A step's progress view inside a reply (see the comment above)."""


for _kind in (*get_args(KnownReason), OtherReason):
    _ReasonField.register(_kind)


class _ProgressView(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind"):
    """Base of a step's progress as a reply shows it: counts and the first failed items (never the
    lists of ids the stored record keeps)."""

    failed_items: list[int] = []
    """The first 100 failed iterations."""
    failed_items_total: int = 0


class ForeachProgressView(_ProgressView, frozen=True, kw_only=True, tag="foreach"):
    """A foreach step's progress (``legato.core.progress.ForeachProgress`` without its id lists)."""

    total: int
    next: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    ignored: int = 0
    concurrency: int
    on_failure: str
    as_: str = msgspec.field(name="as")
    run: int = 1
    stopping: bool | UnsetType = UNSET
    pending: int = 0
    """Iterations not started yet, plus those waiting to be retried."""


class LoopProgressView(_ProgressView, frozen=True, kw_only=True, tag="loop"):
    """A loop step's progress: the next iteration's index and the most it may run."""

    index: int
    max: int


class SubworkflowProgressView(_ProgressView, frozen=True, kw_only=True, tag="subworkflow"):
    """A subworkflow step's progress: the workflow and its child run."""

    workflow: str
    child: str


KnownProgressView: TypeAlias = ForeachProgressView | LoopProgressView | SubworkflowProgressView
ProgressView: TypeAlias = KnownProgressView | OtherProgress

for _kind in (*get_args(KnownProgressView), OtherProgress):
    _ProgressField.register(_kind)

if TYPE_CHECKING:
    ReasonField: TypeAlias = Reason
    ProgressField: TypeAlias = ProgressView
else:
    ReasonField = _ReasonField
    ProgressField = _ProgressField


def _decode_progress_view(value: object) -> ProgressView:
    if not isinstance(value, dict):
        return OtherProgress(None, {"value": value})
    kind = value.get("kind")
    view = _VIEW_BY_KIND.get(kind) if isinstance(kind, str) else None
    if view is not None:
        try:
            known: KnownProgressView = msgspec.convert(value, view)
        except msgspec.ValidationError:
            pass
        else:
            return known
    return OtherProgress(kind if isinstance(kind, str) else None, dict(value))


_VIEW_BY_KIND: dict[str, type[KnownProgressView]] = {
    str(view.__struct_config__.tag): view for view in get_args(KnownProgressView)
}


def reply_dec_hook(kind: type, value: Any) -> Any:
    """Decodes the reason and progress fields of replies (pass it to every reply decoder)."""
    if kind is _ReasonField:
        return decode_reason(value)
    if kind is _ProgressField:
        return _decode_progress_view(value)
    raise NotImplementedError(f"no decoder for {kind!r}")


def reply_enc_hook(value: Any) -> Any:
    """Encodes the fallbacks (``OtherReason``, ``OtherProgress``) as the object they hold."""
    if isinstance(value, OtherReason | OtherProgress):
        return value.raw
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


def to_reply(kind: type[R], value: Any) -> R:
    """``value`` (JSON-like, e.g. a dict built from rows) as the reply Struct ``kind``."""
    return msgspec.convert(value, kind, dec_hook=reply_dec_hook)


# ---------------------------------------------------------------- runs


class InstanceSummary(Reply, frozen=True, kw_only=True):
    """A run's row as lists show it (``instance.list``, ``workflow.status``, ``instance.iterations``)."""

    instance_id: str
    workflow_id: str
    status: InstanceStatus
    version: int | None = None
    """None only for a start accepted and not yet applied by the scheduler."""
    reason: ReasonField | None = None
    """Why the run is not running, was skipped or stopped (typed: ``legato.core.reasons``); for a
    queued run, computed live (place in the queue, what holds the slots)."""
    error: str | None = None
    trigger: Any = None
    """How the run was started (``{"kind": "api", "by": …}``, cron, signal, backfill…)."""
    run_number: int | None = None
    seq: int | None = None
    created_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    parent_instance_id: str | None = None


class QueuedRun(InstanceSummary, frozen=True, kw_only=True):
    """A queued run in ``workflow.status``, with its place in the queue."""

    position: int


class Iteration(InstanceSummary, frozen=True, kw_only=True):
    """A child run of a foreach, loop or subworkflow step."""

    iteration: int | None
    outputs: Any = None


class AttemptView(Reply, frozen=True, kw_only=True):
    """One attempt of a step."""

    attempt_id: str
    attempt: int
    status: str
    failure_kind: str | None = None
    executor: str | None = None
    queue: str | None = None
    dispatched_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    outputs: Any = None
    error: str | None = None
    exit_code: int | None = None
    log_tail: str | None = None


class Retries(Reply, frozen=True, kw_only=True):
    """Retries a step used, per kind of failure."""

    error: int = 0
    platform: int = 0
    timeout: int = 0


class StepView(Reply, frozen=True, kw_only=True):
    """One step of a run (``pending`` with no attempts when the scheduler has not reached it)."""

    step_id: str
    status: str
    attempts: list[AttemptView] = []
    retries: Retries = Retries()
    failure_ignored: bool = False
    params: Any = None
    outputs: Any = None
    error: str | None = None
    reason: ReasonField | None = None
    created_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    signals: Any | UnsetType = UNSET
    progress: ProgressField | UnsetType | None = UNSET
    """A foreach/loop/subworkflow step's progress (typed view), None for other steps."""


class TimelineEntry(Reply, frozen=True, kw_only=True):
    """One entry of a run's timeline."""

    at: str | None
    step_id: str | None = None
    event: str
    message: str | None = None
    actor: str | None = None
    details: Any = None


class InstanceDetail(InstanceSummary, frozen=True, kw_only=True):
    """``instance.get``: a run with its timeline and a page of its steps (``steps_next`` for more).
    A start accepted and not yet applied by the scheduler is ``pending`` with only the ids set."""

    params: Any | UnsetType = UNSET
    run_params: Any | UnsetType = UNSET
    outputs: Any | UnsetType = UNSET
    trigger_key: str | UnsetType | None = UNSET
    unblocked: bool | UnsetType | None = UNSET
    traceparent: str | UnsetType | None = UNSET
    trace_id: str | UnsetType | None = UNSET
    parent_step_id: str | UnsetType | None = UNSET
    parent_iteration: int | UnsetType | None = UNSET
    requested_at: str | UnsetType | None = UNSET
    timeline: list[TimelineEntry] = []
    steps_total: int | UnsetType = UNSET
    step_counts: dict[str, int] | UnsetType = UNSET
    steps_offset: int | UnsetType = UNSET
    steps: list[StepView] = []
    steps_next: int | UnsetType | None = UNSET
    """Offset of the next page of steps (``steps_offset``), None on the last page."""


class InstancePage(Reply, frozen=True, kw_only=True):
    """``instance.list``: newest first; ``next_cursor`` is the ``cursor`` of the next page."""

    instances: list[InstanceSummary]
    next_cursor: int | None = None


class IterationPage(Reply, frozen=True, kw_only=True):
    """``instance.iterations``: in iteration order; ``next`` is the ``after`` of the next page."""

    iterations: list[Iteration]
    next: int | None = None


# ---------------------------------------------------------------- workflows


class WorkflowListItem(WorkflowSummary, frozen=True, kw_only=True):
    """A workflow in ``workflow.list``, with the start of its description."""

    description: str | None = None


class WorkflowPage(Reply, frozen=True, kw_only=True):
    """``workflow.list``: by id; ``next`` is the ``after`` of the next page."""

    workflows: list[WorkflowListItem]
    next: str | None = None


class VersionInfo(Reply, frozen=True, kw_only=True):
    """One stored version of a workflow."""

    version: int
    digest: str
    created_at: str
    created_by: str | None = None


class WorkflowDetail(WorkflowSummary, frozen=True, kw_only=True):
    """``workflow.get``: the workflow, one version's definition (parsed) and source, the last versions."""

    version: int
    definition: Any
    source: Any = None
    versions: list[VersionInfo] = []


class PauseInfo(Reply, frozen=True, kw_only=True):
    """Who paused a workflow, why and since when."""

    by: str | None = None
    reason: str | None = None
    since: str | None = None


class StrategyChange(Reply, frozen=True, kw_only=True):
    """Who set a workflow's run strategy through the API (``workflow.set_run_strategy``), why and when;
    activating a version applies the definition's strategy again and clears it."""

    by: str | None = None
    reason: str | None = None
    at: str | None = None


class WorkflowStatus(WorkflowSummary, frozen=True, kw_only=True):
    """``workflow.status``: the queue's state, counts per status, the running and queued runs."""

    state: str
    """``active``, ``inactive``, ``paused`` or ``blocked``."""
    pause: PauseInfo | None = None
    strategy_change: StrategyChange | None = None
    counts: dict[str, int] = {}
    running_runs: list[InstanceSummary] = []
    queued_runs: list[QueuedRun] = []


class WorkflowPaused(WorkflowSummary, frozen=True, kw_only=True):
    """``workflow.pause`` / ``workflow.resume``: the workflow after the change."""

    changed: bool
    """False when it already was paused (resumed)."""
    pause: PauseInfo | None = None


class StrategySet(WorkflowSummary, frozen=True, kw_only=True):
    """``workflow.set_run_strategy``: the workflow after the change, with who set it and why."""

    strategy_change: StrategyChange | None = None


class WorkflowArchived(WorkflowSummary, frozen=True, kw_only=True):
    """``workflow.archive``: the workflow, now archived."""

    result: str


class WorkflowDeleted(Reply, frozen=True, kw_only=True):
    """``workflow.delete``: what was deleted."""

    workflow_id: str
    deleted: bool
    result: str
    runs: int = 0
    cancelled_attempts: int = 0


# ---------------------------------------------------------------- tags


class TagHolder(Reply, frozen=True, kw_only=True):
    """A step holding a tag permit."""

    instance_id: str
    step_id: str
    workflow_id: str


class TagInfo(Reply, frozen=True, kw_only=True):
    """A concurrency tag: its limit, permits in use, steps waiting (``tag.set`` of a limit, ``tag.list``)."""

    tag: str
    limit: int | None
    in_use: int | UnsetType = UNSET
    waiting: int | UnsetType = UNSET
    held_by: list[TagHolder] | UnsetType = UNSET
    updated_by: str | UnsetType | None = UNSET
    updated_at: str | UnsetType = UNSET


class TagList(Reply, frozen=True, kw_only=True):
    """``tag.list``."""

    tags: list[TagInfo]


# ---------------------------------------------------------------- signals


class SignalInfo(Reply, frozen=True, kw_only=True):
    """A stored signal (``raw`` and ``error`` for one rejected by its schema)."""

    name: str
    id: str
    seq: int
    params: Any = None
    publisher: str | None = None
    publisher_instance: str | None = None
    publisher_step: str | None = None
    published_at: str | None = None
    received_at: str | None = None
    rejected: bool = False
    error: str | None = None
    raw: Any | UnsetType = UNSET


class SignalPage(Reply, frozen=True, kw_only=True):
    """``signal.list``: newest first; ``next`` is the ``before`` of the next page."""

    signals: list[SignalInfo]
    next: int | None = None


class JoinArrival(Reply, frozen=True, kw_only=True):
    """A signal that arrived for one leg of a join."""

    leg: str
    id: str
    at: Any = None


class PartialJoin(Reply, frozen=True, kw_only=True):
    """A join of a multi-signal trigger still missing some legs."""

    tuple_key: str
    join_values: Any = None
    arrived: list[JoinArrival] = []
    missing: list[str] = []
    first_at: str | None = None
    expires_at: str | None = None
    expired: bool | None = None


class PendingTrigger(Reply, frozen=True, kw_only=True):
    """A multi-signal trigger and its partial joins."""

    workflow_id: str
    trigger_id: str
    active: bool
    signals: list[str]
    join: list[str] = []
    total: int = 0
    tuples: list[PartialJoin] = []


class WaitingStep(Reply, frozen=True, kw_only=True):
    """A step of a run waiting for a signal."""

    workflow_id: str
    instance_id: str
    step_id: str
    signal: str
    match: Any = None
    since: str | None = None


class PendingSignalList(Reply, frozen=True, kw_only=True):
    """``signal.pending``: partial joins of signal triggers, and steps waiting for a signal."""

    triggers: list[PendingTrigger] = []
    steps: list[WaitingStep] = []


class SignalSchemaSet(Reply, frozen=True, kw_only=True):
    """``signal.set_schema``: the schema now declared (None: removed)."""

    name: str
    schema: dict[str, Any] | None = None


class LineageSignal(Reply, frozen=True, kw_only=True):
    """A signal in a lineage: the stored signal (only ``name``/``id`` when not stored or past the
    depth), the runs it triggered and unblocked, the run that published it."""

    name: str
    id: str
    seq: int | UnsetType = UNSET
    params: Any | UnsetType = UNSET
    publisher: str | UnsetType | None = UNSET
    publisher_instance: str | UnsetType | None = UNSET
    publisher_step: str | UnsetType | None = UNSET
    published_at: str | UnsetType | None = UNSET
    received_at: str | UnsetType | None = UNSET
    rejected: bool | UnsetType = UNSET
    error: str | UnsetType | None = UNSET
    raw: Any | UnsetType = UNSET
    step_id: str | UnsetType = UNSET
    """The step it unblocked (in a run's ``unblocked_by``)."""
    triggered: list[LineageRun] | UnsetType = UNSET
    unblocked: list[LineageRun] | UnsetType = UNSET
    published_by: LineageRun | UnsetType = UNSET


class LineageRun(Reply, frozen=True, kw_only=True):
    """A run in a lineage: the signals that started and unblocked it, those it published."""

    instance_id: str
    workflow_id: str | UnsetType = UNSET
    status: str | UnsetType = UNSET
    trigger_id: str | UnsetType = UNSET
    """The signal trigger that started it (in a signal's ``triggered``)."""
    error: str | UnsetType | None = UNSET
    step_id: str | UnsetType = UNSET
    """The step the signal unblocked (in a signal's ``unblocked``)."""
    started_by: list[LineageSignal] | UnsetType = UNSET
    unblocked_by: list[LineageSignal] | UnsetType = UNSET
    published: list[LineageSignal] | UnsetType = UNSET


class Lineage(Reply, frozen=True, kw_only=True):
    """``signal.lineage``: from a run (``run``) or from a signal (``signal``)."""

    run: LineageRun | UnsetType = UNSET
    signal: LineageSignal | UnsetType = UNSET


# ---------------------------------------------------------------- dead letters


class DeadLetterInfo(Reply, frozen=True, kw_only=True):
    """A dead letter (``dead_letter.list``, ``dead_letter.discard``)."""

    id: int
    stream: str | None = None
    consumer: str | None = None
    subject: str | None = None
    stream_seq: int | None = None
    msg_id: str | None = None
    error: str | None = None
    deliveries: int | None = None
    payload_bytes: int = 0
    created_at: str | None = None
    replayed_at: str | None = None
    replayed_by: str | None = None
    discarded_at: str | None = None
    discarded_by: str | None = None


class DeadLetterPage(Reply, frozen=True, kw_only=True):
    """``dead_letter.list``: newest first; ``next`` is the ``before`` of the next page."""

    dead_letters: list[DeadLetterInfo]
    next: int | None = None


class DeadLetterDetail(DeadLetterInfo, frozen=True, kw_only=True):
    """``dead_letter.get``: the message with its headers and (a part of) its payload."""

    headers: Any = None
    payload: str | None = None
    payload_encoding: str = "utf-8"
    """``utf-8`` (text) or ``base64``."""
    payload_offset: int = 0
    payload_next_offset: int | None = None
    """Where the next part starts (``payload_offset`` of the next call), None on the last part."""
    payload_truncated: bool = False


class DeadLetterReplayed(DeadLetterInfo, frozen=True, kw_only=True):
    """``dead_letter.replay``: republished once (``already_replayed``: by an earlier call)."""

    replayed: bool
    already_replayed: bool


# ---------------------------------------------------------------- backfills


class BackfillPlanItem(Reply, frozen=True, kw_only=True):
    """One period of a dry-run backfill."""

    period_start: str
    period_end: str
    action: str
    status: str | None = None
    params: dict[str, Any] = {}


class BackfillStrategy(Reply, frozen=True, kw_only=True):
    """The workflow's run strategy a backfill runs under."""

    run_strategy: str
    max_concurrency: int


class BackfillStarted(Reply, frozen=True, kw_only=True):
    """``backfill.start``: the periods it creates (with ``dry_run``: would create, and the plan)."""

    workflow_id: str
    periods: int
    already_done: int
    already_failed: int
    strategy: BackfillStrategy
    concurrency: int
    priority: str = "low"
    dry_run: bool | UnsetType = UNSET
    would_create: int | UnsetType = UNSET
    plan: list[BackfillPlanItem] | UnsetType = UNSET
    backfill_id: str | UnsetType = UNSET
    created: int | UnsetType = UNSET
    status: str | UnsetType = UNSET


class FailedPeriod(Reply, frozen=True, kw_only=True):
    """A period whose run failed."""

    period_start: str | None
    instance_id: str | None
    error: str | None = None


class BackfillInfo(Reply, frozen=True, kw_only=True):
    """A backfill: its range, periods counted by status, throughput and ETA (``backfill.list``,
    ``show``, ``pause``, ``resume``, ``cancel``, ``retry_failed``)."""

    backfill_id: str
    workflow_id: str
    version: int | None = None
    from_: str | None = msgspec.field(name="from", default=None)
    to: str | None = None
    step_seconds: float | None = None
    params: Any = None
    concurrency: int | None = None
    priority: str = "low"
    status: str
    created_by: str | None = None
    created_at: str | None = None
    finished_at: str | None = None
    cancelled_by: str | None = None
    cancel_reason: str | None = None
    total: int = 0
    counts: dict[str, int] = {}
    finished: int = 0
    remaining: int = 0
    runs_per_second: float | None = None
    eta_seconds: float | None = None
    failed_periods: list[FailedPeriod] | UnsetType = UNSET
    """``backfill.show``: the first failed periods."""
    stopped_runs: int | UnsetType = UNSET
    """``backfill.cancel``: runs stopped with it."""
    retrying: int | UnsetType = UNSET
    """``backfill.retry_failed``: failed periods started again."""


class BackfillList(Reply, frozen=True, kw_only=True):
    """``backfill.list``: newest first."""

    backfills: list[BackfillInfo]
