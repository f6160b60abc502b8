"""The in-memory state of one workflow's active runs, as its actor holds it, and how it is written back.

An actor loads the workflow row, its queued and running runs, and the steps and current attempts of
the running ones when it activates. Messages mutate these objects and record what changed in a ``UnitOfWork``; each batch of
messages ends with one ``writes.flush`` that writes every change in a handful of bulk statements
inside the batch's transaction. If the transaction fails, the actor throws the state away and reloads it from Postgres:
Postgres is the truth, memory is a cache that is only trusted while it matches a committed state.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from legato.bus.publisher import OutgoingMessage
from legato.core.progress import Progress
from legato.core.reasons import PERMIT_WAITS, Reason, SkippedByOperator
from legato.core.statuses import FAILED_STEP, TERMINAL_INSTANCE, TERMINAL_STEP
from legato.scheduler.instance_map import InstanceMap
from legato.scheduler.span_facts import SpanFact


def now_utc() -> datetime:
    return datetime.now(UTC)


def from_epoch(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, UTC) if ts else None


@dataclass
class WorkflowRow:
    id: str
    active: bool
    active_version: int
    run_strategy: str
    max_concurrency: int
    paused: bool
    blocked_by: str | None
    blocked_since: datetime | None
    running_count: int
    queued_count: int
    dirty: bool = False


@dataclass
class AttemptState:
    id: str
    instance_id: str
    step_id: str
    attempt: int
    status: str  # dispatched | running | succeeded | failed | timed_out | cancelled | lost
    queue: str
    dispatched_at: datetime
    failure_kind: str | None = None
    executor: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    outputs: dict[str, Any] | None = None
    error: str | None = None
    exit_code: int | None = None
    log_tail: str | None = None
    span_id: str | None = None  # reserved at dispatch; the step.attempt span gets it when it ends
    # Cancelled with its run, not yet confirmed stopped by its executor: holds the run's strategy slot
    # until then, at most until this time.
    stopping_until: datetime | None = None
    lead: bool = False  # sent to its queue's lead lane (kept in memory only)
    new: bool = False
    dirty: bool = False


@dataclass
class StepState:
    instance_id: str
    step_id: str
    status: str  # waiting | queued | running | retrying | succeeded | failed | timed_out | stopped | skipped
    attempts: int = 0
    current_attempt_id: str | None = None
    retries_error: int = 0
    retries_platform: int = 0
    retries_timeout: int = 0
    failure_ignored: bool = False
    params: dict[str, Any] | None = None
    outputs: dict[str, Any] | None = None
    error: str | None = None
    reason: Reason | None = None
    created_at: datetime = field(default_factory=now_utc)
    started_at: datetime | None = None
    ended_at: datetime | None = None
    signals: dict[str, Any] | None = None  # wait_for_signals: name -> fields of the signal that came
    waiting_since: datetime | None = None  # FIFO order among steps waiting for a permit
    # foreach / loop / subworkflow: totals, next iteration to create, per-status counts, live children.
    progress: Progress | None = None
    # Lifecycle events (docs/events.md, run_events.py): the status the last event said (the stored one
    # when loaded; None for a new step), and how many events this step of this run has had.
    published_status: str | None = None
    notify_seq: int = 0
    new: bool = False
    dirty: bool = False

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STEP

    @property
    def failed(self) -> bool:
        """Failed in a way that fails the run (an ignored failure does not)."""
        return self.status in FAILED_STEP and not self.failure_ignored

    @property
    def done_ok(self) -> bool:
        """Counts as done for its successors: succeeded, failed with on_failure: ignore, or skipped by
        an operator (who said: go on without it)."""
        return (
            self.status == "succeeded"
            or (self.status in FAILED_STEP and self.failure_ignored)
            or (self.status == "skipped" and isinstance(self.reason, SkippedByOperator))
        )


@dataclass
class InstanceState:
    id: str
    workflow_id: str
    version: int
    trigger_key: str
    trigger: dict[str, Any]
    status: str
    params: dict[str, Any]
    run_params: dict[str, Any]
    created_at: datetime
    reason: Reason | None = None
    outputs: dict[str, Any] | None = None
    error: str | None = None
    run_number: int = 1
    unblocked: bool = False
    parent_instance_id: str | None = None
    parent_step_id: str | None = None
    parent_iteration: int | None = None
    root_instance_id: str | None = None
    traceparent: str | None = None
    requested_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    trace_parent: str | None = None  # traceparent of the run root span's parent (e.g. the API request)
    trace_links: list[str] | None = None  # traceparents the run root span links to (the signals)
    body_path: str | None = None  # which body of the definition a child run executes
    under_strategy: bool = True  # counts under the workflow's run strategy (child runs do not)
    # Lifecycle events (docs/events.md, run_events.py): the status the last event said (the stored one
    # when loaded; None for a new run), and how many events this run has had.
    published_status: str | None = None
    notify_seq: int = 0
    steps: dict[str, StepState] = field(default_factory=dict)
    attempts: dict[str, AttemptState] = field(default_factory=dict)  # current attempts only
    typed_params: dict[str, Any] | None = None  # decoded once per activation for expressions
    new: bool = False
    dirty: bool = False

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_INSTANCE


@dataclass
class TimelineEntry:
    instance_id: str
    event: str
    message: str | None = None
    step_id: str | None = None
    actor: str | None = None
    details: dict[str, Any] | None = None
    at: datetime = field(default_factory=now_utc)


@dataclass
class NewTimer:
    partition: int
    workflow_id: str
    instance_id: str
    kind: str
    fire_at: datetime
    step_id: str | None = None
    attempt_id: str | None = None
    payload: dict[str, Any] | None = None


@dataclass
class TagState:
    """A named concurrency tag as one batch sees it (its row is locked for the batch)."""

    tag: str
    limit: int | None  # None: no limit set for this tag
    in_use: int
    # Steps waiting for this tag, oldest first: (since, workflow_id, instance_id, step_id).
    waiters: list[tuple[datetime, str, str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class StoppingAttempt:
    """An attempt of an ended run that its executor has not confirmed stopped yet."""

    attempt_id: str
    instance_id: str
    step_id: str
    until: datetime


# How often a batch looks for the attempts waiting in executor queues in every run in memory.
DISPATCHED_RESCAN_SECONDS = 1.0


@dataclass
class WorkflowState:
    """Everything the actor holds for one workflow between batches."""

    row: WorkflowRow
    instances: InstanceMap[InstanceState] = field(default_factory=InstanceMap)  # queued and running
    queue: deque[str] = field(default_factory=deque)  # queued ids in arrival (seq) order
    loaded_at: float = field(default_factory=time.monotonic)
    # Leaf attempts of this workflow dispatched or running (for step_concurrency).
    leaf_active: int = 0
    # Named tags, loaded (and locked) at the start of each batch.
    tags: dict[str, TagState] = field(default_factory=dict)
    # Attempts of ended runs still stopping, by attempt id (their runs hold strategy slots meanwhile).
    stopping: dict[str, StoppingAttempt] = field(default_factory=dict)
    # Leaf attempts dispatched to each executor queue and not started yet, and the steps held back
    # (oldest first, as (instance id, step id)) while that number is at the dispatch window: one
    # workflow's fan-out never puts more than the window ahead of other workflows' work in a queue.
    unstarted: dict[str, int] = field(default_factory=dict)
    dispatch_backlog: dict[str, deque[tuple[str, str]]] = field(default_factory=dict)

    # The attempts counted in ``unstarted``, by id: (run id, queue).
    dispatched: dict[str, tuple[str, str]] = field(default_factory=dict)
    # The attempts sent to a queue's lead lane and not ended (waiting or running), by id and by queue.
    leading: dict[str, tuple[str, str]] = field(default_factory=dict)
    lead_in_flight: dict[str, int] = field(default_factory=dict)
    indexed_at: float = 0.0  # when ``index_dispatched`` last scanned every run

    def begin_batch(self, finished: Collection[str] = ()) -> None:
        """The per-message bookkeeping of ``unstarted`` never drifts past one batch: each batch recounts
        it from the attempts it counted (``count_unstarted``, a look at each), and at most once a second
        from every run (``index_dispatched``; a backlog of queued runs made that scan per batch cost
        more than the rest of the batch). ``finished``: attempts whose results have arrived and wait for
        a later batch; they left their queue, so they are not counted (that batch counts them, then
        applies them)."""
        if time.monotonic() - self.indexed_at >= DISPATCHED_RESCAN_SECONDS:
            self.index_dispatched(finished)
        else:
            self.count_unstarted(finished)

    def note_dispatched(self, at: AttemptState) -> None:
        self.dispatched[at.id] = (at.instance_id, at.queue)
        self.unstarted[at.queue] = self.unstarted.get(at.queue, 0) + 1
        if at.lead:
            self.leading[at.id] = (at.instance_id, at.queue)
            self.lead_in_flight[at.queue] = self.lead_in_flight.get(at.queue, 0) + 1

    def note_left_queue(self, at: AttemptState) -> None:
        if at.status == "dispatched":
            self.dispatched.pop(at.id, None)
            self.unstarted[at.queue] = max(0, self.unstarted.get(at.queue, 0) - 1)

    def count_unstarted(self, finished: Collection[str] = ()) -> None:
        """Recount the attempts waiting in executor queues, and those in flight from a lead lane, from
        those counted, dropping any that moved on (or whose run left memory) by a path that did not say
        so, and skipping ``finished``."""
        self.unstarted = self._recount(self.dispatched, ("dispatched",), finished)
        self.lead_in_flight = self._recount(self.leading, ("dispatched", "running"), finished)

    def _recount(
        self, ids: dict[str, tuple[str, str]], statuses: tuple[str, ...], finished: Collection[str]
    ) -> dict[str, int]:
        counts: dict[str, int] = {}
        for attempt_id, (instance_id, queue) in list(ids.items()):
            inst = self.instances.get(instance_id)
            at = inst.attempts.get(attempt_id) if inst is not None else None
            if at is None or at.status not in statuses:
                del ids[attempt_id]
            elif attempt_id not in finished:
                counts[queue] = counts.get(queue, 0) + 1
        return counts

    def index_dispatched(self, finished: Collection[str] = ()) -> None:
        """Find the attempts waiting in executor queues in every run in memory (on load, and once a
        second: an attempt dispatched by a path that did not say so is counted then)."""
        self.dispatched = {
            at.id: (inst.id, at.queue)
            for inst in self.instances.values()
            for at in inst.attempts.values()
            if at.status == "dispatched"
        }
        self.indexed_at = time.monotonic()
        self.count_unstarted(finished)

    def stopping_runs(self) -> list[str]:
        """Ended runs whose stop is not confirmed yet, oldest deadline first."""
        seen: dict[str, datetime] = {}
        for s in self.stopping.values():
            seen[s.instance_id] = min(s.until, seen.get(s.instance_id, s.until))
        return sorted(seen, key=lambda i: seen[i])

    def running(self) -> list[InstanceState]:
        """Runs that hold a slot of the run strategy."""
        return [i for i in self.instances.values() if i.status == "running" and i.under_strategy]

    def waiting_steps(self) -> list[tuple[datetime, InstanceState, StepState]]:
        """Steps waiting for a concurrency permit, oldest first."""
        out = [
            (st.waiting_since or st.created_at, inst, st)
            for inst in self.instances.values()
            if inst.status == "running"
            for st in inst.steps.values()
            if st.status == "waiting" and isinstance(st.reason, PERMIT_WAITS)
        ]
        out.sort(key=lambda x: x[0])
        return out


@dataclass(frozen=True, slots=True)
class TimerCancel:
    """Drop the timers of a run; None matches any kind / any step."""

    instance_id: str
    kind: str | None
    step_id: str | None


@dataclass(frozen=True, slots=True)
class ActionRecord:
    """An operator action applied (or refused), recorded once by its id with what it did."""

    action_id: str
    workflow_id: str
    instance_id: str | None
    action: str
    actor: str
    reason: str
    result: str


@dataclass(frozen=True, slots=True)
class PermitGrant:
    """A limited tag's slot taken by an attempt."""

    tag: str
    attempt_id: str
    workflow_id: str
    instance_id: str
    step_id: str


@dataclass(frozen=True, slots=True)
class PermitRelease:
    """A limited tag's slot given back by an ended attempt."""

    tag: str
    attempt_id: str


@dataclass(frozen=True, slots=True)
class TagWaiterAdd:
    """A step starts waiting for a tag's slot."""

    tag: str
    workflow_id: str
    instance_id: str
    step_id: str
    since: datetime


@dataclass(frozen=True, slots=True)
class TagWaiterRemove:
    """A step no longer waits for a tag's slot (it got one, or went away)."""

    tag: str
    instance_id: str
    step_id: str


@dataclass(frozen=True, slots=True)
class StopSettled:
    """A stopping attempt is over (or given up on): its slot is free again."""

    attempt_id: str
    ended_at: datetime | None
    log_tail: str | None
    error: str


@dataclass(frozen=True, slots=True)
class OrphanSettled:
    """An attempt still dispatched/running whose run is no longer active: it is marked lost."""

    attempt_id: str
    error: str


@dataclass
class UnitOfWork:
    """Changes made while applying one batch, written in bulk by ``writes.flush`` inside the
    batch's transaction."""

    instances: dict[str, InstanceState] = field(default_factory=dict)
    steps: dict[tuple[str, str], StepState] = field(default_factory=dict)
    attempts: dict[str, AttemptState] = field(default_factory=dict)
    timeline: list[TimelineEntry] = field(default_factory=list)
    outbox: list[OutgoingMessage] = field(default_factory=list)
    # Lifecycle events (``run_events``), written as one ``event_outbox`` row per flush.
    events: list[OutgoingMessage] = field(default_factory=list)
    timers: list[NewTimer] = field(default_factory=list)
    cancel_timers: set[TimerCancel] = field(default_factory=set)
    actions: list[ActionRecord] = field(default_factory=list)
    unblocked_instances: list[str] = field(default_factory=list)
    # Ended runs whose open signal waits the router is told to cancel (see ``actors.py``).
    cancel_waits: list[str] = field(default_factory=list)
    permits_add: list[PermitGrant] = field(default_factory=list)
    permits_del: list[PermitRelease] = field(default_factory=list)
    waiters_add: list[TagWaiterAdd] = field(default_factory=list)
    waiters_del: list[TagWaiterRemove] = field(default_factory=list)
    # Other workflows to wake because a permit of a tag they wait for was freed.
    nudges: set[str] = field(default_factory=set)
    # What the run's trace shows, emitted as spans once the batch committed (``run_spans.emit``): an
    # aborted batch must not report what did not happen.
    spans: list[SpanFact] = field(default_factory=list)
    # foreach steps whose iterations all ended, as (instance id, step id): their outputs are collected
    # from Postgres.
    collect: list[tuple[str, str]] = field(default_factory=list)
    # The outbox rows written so far (ids and messages): handed to the relay once the batch committed.
    outbox_rows: list[tuple[int, OutgoingMessage]] = field(default_factory=list)
    flushed_timers: int = 0
    flushed_events: int = 0  # events written so far: the event relay is woken once the batch committed
    workflow_dirty: bool = False
    stops_settled: list[StopSettled] = field(default_factory=list)
    orphans_settled: list[OrphanSettled] = field(default_factory=list)

    def cancel_timer(self, instance_id: str, kind: str | None = None, step_id: str | None = None) -> None:
        """Drop matching timers: persisted ones at flush, ones added earlier in this batch at once."""
        self.cancel_timers.add(TimerCancel(instance_id, kind, step_id))
        self.timers = [
            t
            for t in self.timers
            if not (
                t.instance_id == instance_id
                and (kind is None or t.kind == kind)
                and (step_id is None or t.step_id == step_id)
            )
        ]

    def touch_instance(self, inst: InstanceState) -> None:
        inst.dirty = True
        self.instances[inst.id] = inst

    def touch_step(self, st: StepState) -> None:
        st.dirty = True
        self.steps[(st.instance_id, st.step_id)] = st

    def touch_attempt(self, at: AttemptState) -> None:
        at.dirty = True
        self.attempts[at.id] = at

    def note(self, entry: TimelineEntry) -> None:
        self.timeline.append(entry)

    def written(self) -> None:
        """Everything recorded so far was written: start afresh (a batch may flush more than once).

        What is reported after commit (spans, progress, nudges) and the foreach steps still to collect
        are kept."""
        for inst in self.instances.values():
            inst.new = inst.dirty = False
        for st in self.steps.values():
            st.new = st.dirty = False
        for at in self.attempts.values():
            at.new = at.dirty = False
        self.flushed_timers += len(self.timers)
        self.flushed_events += len(self.events)
        self.instances = {}
        self.steps = {}
        self.attempts = {}
        self.timeline = []
        self.outbox = []
        self.events = []
        self.timers = []
        self.cancel_timers = set()
        self.actions = []
        self.unblocked_instances = []
        self.cancel_waits = []
        self.permits_add = []
        self.permits_del = []
        self.waiters_add = []
        self.waiters_del = []
        self.stops_settled = []
        self.orphans_settled = []
        self.workflow_dirty = False
