"""The in-memory state of one workflow's active runs, as its actor holds it, and how it is written back.

An actor loads the workflow row, its queued and running runs, and the steps and current attempts of
the running ones when it activates. Messages mutate these objects; each batch of messages ends with one
``UnitOfWork.flush`` that writes every change in a handful of bulk statements inside the batch's
transaction. If the transaction fails, the actor throws the state away and reloads it from Postgres:
Postgres is the truth, memory is a cache that is only trusted while it matches a committed state.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec

from legato.bus.publisher import OutgoingMessage
from legato.core.statuses import FAILED_STEP, TERMINAL_INSTANCE, TERMINAL_STEP
from legato.store.outbox import add_to_outbox

OPERATOR_SKIP = "skipped_by_operator"
# A step held back because its workflow already has the dispatch window of attempts waiting in the
# step's executor queue (see ``RunEngine.dispatch``).
DISPATCH_WAIT = "waiting_for_dispatch_slot"


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

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> WorkflowRow:
        return cls(
            id=r["id"],
            active=r["active"],
            active_version=r["active_version"],
            run_strategy=r["run_strategy"],
            max_concurrency=r["max_concurrency"],
            paused=r["paused"],
            blocked_by=r["blocked_by"],
            blocked_since=r["blocked_since"],
            running_count=r["running_count"],
            queued_count=r["queued_count"],
        )


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
    reason: dict[str, Any] | None = None
    created_at: datetime = field(default_factory=now_utc)
    started_at: datetime | None = None
    ended_at: datetime | None = None
    signals: dict[str, Any] | None = None  # wait_for_signals: name -> fields of the signal that came
    waiting_since: datetime | None = None  # FIFO order among steps waiting for a permit
    # foreach / loop / subworkflow: totals, next iteration to create, per-status counts, live children.
    progress: dict[str, Any] | None = None
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
            or (self.status == "skipped" and (self.reason or {}).get("code") == OPERATOR_SKIP)
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
    reason: dict[str, Any] | None = None
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


@dataclass
class WorkflowState:
    """Everything the actor holds for one workflow between batches."""

    row: WorkflowRow
    instances: dict[str, InstanceState] = field(default_factory=dict)  # queued and running
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

    def count_unstarted(self) -> None:
        """Recount the attempts waiting in executor queues from the attempts themselves."""
        counts: dict[str, int] = {}
        for inst in self.instances.values():
            for at in inst.attempts.values():
                if at.status == "dispatched":
                    counts[at.queue] = counts.get(at.queue, 0) + 1
        self.unstarted = counts

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
            if st.status == "waiting"
            and st.reason is not None
            and st.reason.get("code", "").startswith("waiting_for_")
            and st.reason.get("code") not in ("waiting_for_signals", DISPATCH_WAIT)
        ]
        out.sort(key=lambda x: x[0])
        return out


@dataclass
class UnitOfWork:
    """Changes made while applying one batch, flushed in bulk inside the batch's transaction."""

    instances: dict[str, InstanceState] = field(default_factory=dict)
    steps: dict[tuple[str, str], StepState] = field(default_factory=dict)
    attempts: dict[str, AttemptState] = field(default_factory=dict)
    timeline: list[TimelineEntry] = field(default_factory=list)
    outbox: list[OutgoingMessage] = field(default_factory=list)
    timers: list[NewTimer] = field(default_factory=list)
    # (instance_id, kind, step_id): None matches any kind / any step
    cancel_timers: set[tuple[str, str | None, str | None]] = field(default_factory=set)
    fired_timers: list[int] = field(default_factory=list)
    actions: list[tuple[str, str, str | None, str, str, str, str]] = field(default_factory=list)
    unblocked_instances: list[str] = field(default_factory=list)
    signal_waits: list[tuple[str, str, str, str, str, dict[str, Any]]] = field(default_factory=list)
    cancel_waits: list[str] = field(default_factory=list)
    permits_add: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    permits_del: list[tuple[str, str]] = field(default_factory=list)
    waiters_add: list[tuple[str, str, str, str, datetime]] = field(default_factory=list)
    waiters_del: list[tuple[str, str, str]] = field(default_factory=list)
    # Other workflows to wake because a permit of a tag they wait for was freed.
    nudges: set[str] = field(default_factory=set)
    # Spans to emit once the batch committed (an aborted batch must not report what did not happen).
    spans: list[Callable[[], None]] = field(default_factory=list)
    # Status changes for watchers, published after commit on core NATS (not through the outbox).
    progress: dict[str, Any] = field(default_factory=dict)
    # foreach steps whose iterations all ended: their outputs are collected from Postgres.
    collect: list[tuple[str, str]] = field(default_factory=list)
    flushed_outbox: int = 0
    flushed_timers: int = 0
    workflow_dirty: bool = False
    # Stopping attempts settled: (attempt_id, ended_at, log_tail, error); their slot is free again.
    stops_settled: list[tuple[str, datetime | None, str | None, str]] = field(default_factory=list)
    # Attempts of runs no longer active that were still dispatched/running: (attempt_id, error).
    orphans_settled: list[tuple[str, str]] = field(default_factory=list)
    # Callbacks to run after commit (e.g. wake the timer loop), never inside the transaction.
    after_commit: list[Any] = field(default_factory=list)

    def cancel_timer(self, instance_id: str, kind: str | None = None, step_id: str | None = None) -> None:
        """Drop matching timers: persisted ones at flush, ones added earlier in this batch at once."""
        self.cancel_timers.add((instance_id, kind, step_id))
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

    @property
    def empty(self) -> bool:
        return not (
            self.instances
            or self.steps
            or self.attempts
            or self.timeline
            or self.outbox
            or self.timers
            or self.cancel_timers
            or self.fired_timers
            or self.actions
            or self.unblocked_instances
            or self.signal_waits
            or self.cancel_waits
            or self.permits_add
            or self.permits_del
            or self.waiters_add
            or self.waiters_del
            or self.stops_settled
            or self.orphans_settled
            or self.workflow_dirty
        )

    async def flush(self, conn: asyncpg.Connection, wf: WorkflowRow) -> None:
        """Write everything recorded so far and start afresh (a batch may flush more than once)."""
        await self._write(conn, wf)
        self.mark_clean()
        fresh = UnitOfWork()
        for name in (
            "instances",
            "steps",
            "attempts",
            "timeline",
            "outbox",
            "timers",
            "cancel_timers",
            "fired_timers",
            "actions",
            "unblocked_instances",
            "signal_waits",
            "cancel_waits",
            "permits_add",
            "permits_del",
            "waiters_add",
            "waiters_del",
            "stops_settled",
            "orphans_settled",
        ):
            self.flushed_outbox += len(self.outbox) if name == "outbox" else 0
            self.flushed_timers += len(self.timers) if name == "timers" else 0
            setattr(self, name, getattr(fresh, name))
        self.workflow_dirty = False

    async def _write(self, conn: asyncpg.Connection, wf: WorkflowRow) -> None:
        if self.instances:
            await _upsert_instances(conn, list(self.instances.values()))
        if self.steps:
            await _upsert_steps(conn, list(self.steps.values()))
        if self.attempts:
            await _upsert_attempts(conn, list(self.attempts.values()))
        if self.stops_settled:
            await conn.executemany(
                "UPDATE step_attempt SET stopping_until = NULL, ended_at = coalesce($2, ended_at), "
                "log_tail = coalesce($3, log_tail), error = $4 WHERE id = $1",
                self.stops_settled,
            )
        if self.orphans_settled:
            await conn.executemany(
                "UPDATE step_attempt SET status = 'lost', failure_kind = 'platform', error = $2, "
                "ended_at = now() WHERE id = $1 AND status IN ('dispatched', 'running')",
                self.orphans_settled,
            )
        if self.timeline:
            await conn.execute(
                """
                INSERT INTO timeline (instance_id, step_id, at, event, message, actor, details)
                SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[],
                                     $6::text[], $7::jsonb[])
                """,
                [t.instance_id for t in self.timeline],
                [t.step_id for t in self.timeline],
                [t.at for t in self.timeline],
                [t.event for t in self.timeline],
                [t.message for t in self.timeline],
                [t.actor for t in self.timeline],
                [t.details for t in self.timeline],
            )
        if self.cancel_timers:
            await conn.executemany(
                "DELETE FROM timer WHERE instance_id = $1 AND ($2::text IS NULL OR kind = $2) "
                "AND ($3::text IS NULL OR step_id = $3)",
                list(self.cancel_timers),
            )
        if self.timers:
            await conn.execute(
                """
                INSERT INTO timer (partition, workflow_id, instance_id, step_id, attempt_id, kind, fire_at, payload)
                SELECT * FROM unnest($1::int[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                     $7::timestamptz[], $8::jsonb[])
                """,
                [t.partition for t in self.timers],
                [t.workflow_id for t in self.timers],
                [t.instance_id for t in self.timers],
                [t.step_id for t in self.timers],
                [t.attempt_id for t in self.timers],
                [t.kind for t in self.timers],
                [t.fire_at for t in self.timers],
                [t.payload for t in self.timers],
            )
        if self.actions:
            await conn.executemany(
                "INSERT INTO operator_action (id, workflow_id, instance_id, action, actor, reason, result) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                self.actions,
            )
        if self.signal_waits:
            await conn.executemany(
                "INSERT INTO signal_wait (id, workflow_id, instance_id, step_id, name, match) "
                "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
                self.signal_waits,
            )
        if self.cancel_waits:
            await conn.execute(
                "UPDATE signal_wait SET cancelled = true WHERE instance_id = ANY($1::text[]) "
                "AND satisfied_at IS NULL",
                self.cancel_waits,
            )
        if self.permits_del:
            await conn.executemany(
                "DELETE FROM tag_permit WHERE tag = $1 AND attempt_id = $2", self.permits_del
            )
        if self.permits_add:
            await conn.executemany(
                "INSERT INTO tag_permit (tag, attempt_id, workflow_id, instance_id, step_id) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                self.permits_add,
            )
        if self.waiters_del:
            await conn.executemany(
                "DELETE FROM tag_waiter WHERE tag = $1 AND instance_id = $2 AND step_id = $3",
                self.waiters_del,
            )
        if self.waiters_add:
            await conn.executemany(
                "INSERT INTO tag_waiter (tag, workflow_id, instance_id, step_id, since) VALUES ($1, $2, $3, $4, $5) "
                "ON CONFLICT DO NOTHING",
                self.waiters_add,
            )
        if self.unblocked_instances:
            await conn.execute(
                "UPDATE workflow_instance SET unblocked = true WHERE id = ANY($1::text[])",
                self.unblocked_instances,
            )
        if self.outbox:
            await add_to_outbox(conn, self.outbox)
        if self.workflow_dirty:
            await conn.execute(
                """
                UPDATE workflow SET running_count = $2, queued_count = $3, blocked_by = $4, blocked_since = $5,
                       updated_at = now()
                WHERE id = $1
                """,
                wf.id,
                wf.running_count,
                wf.queued_count,
                wf.blocked_by,
                wf.blocked_since,
            )

    def mark_clean(self) -> None:
        for inst in self.instances.values():
            inst.new = inst.dirty = False
        for st in self.steps.values():
            st.new = st.dirty = False
        for at in self.attempts.values():
            at.new = at.dirty = False


def _columns(spec: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``"name:type name:type …"`` -> (names, Postgres array element types) for bulk statements."""
    pairs = [item.split(":") for item in spec.split()]
    return tuple(n for n, _ in pairs), tuple(t for _, t in pairs)


_INSTANCE_COLUMNS, _INSTANCE_TYPES = _columns(
    """
    id:text workflow_id:text version:int trigger_key:text trigger:jsonb status:text reason:jsonb params:jsonb
    run_params:jsonb outputs:jsonb error:text run_number:int unblocked:bool parent_instance_id:text
    parent_step_id:text parent_iteration:int root_instance_id:text traceparent:text requested_at:timestamptz
    created_at:timestamptz started_at:timestamptz ended_at:timestamptz body_path:text under_strategy:bool
    trace_parent:text trace_links:jsonb
"""
)
_INSTANCE_UPDATABLE = tuple(
    ["status", "reason", "params", "outputs", "error", "run_number", "unblocked", "started_at", "ended_at"]
)


def _bulk_upsert_sql(
    table: str, cols: tuple[str, ...], types: tuple[str, ...], key: str, updatable: tuple[str, ...]
) -> str:
    # jsonb travels as text (see _bulk_columns): asyncpg reads a list value as one more array dimension.
    args = ", ".join(f"${i + 1}::{'text' if t == 'jsonb' else t}[]" for i, t in enumerate(types))
    select = ", ".join(f"{c}::jsonb" if t == "jsonb" else c for c, t in zip(cols, types, strict=True))
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in updatable)
    return (
        f"INSERT INTO {table} ({', '.join(cols)}) SELECT {select} FROM unnest({args}) AS u ({', '.join(cols)}) "
        f"ON CONFLICT ({key}) DO UPDATE SET {sets}"
    )


def _bulk_columns(items: Sequence[object], cols: tuple[str, ...], types: tuple[str, ...]) -> list[list[Any]]:
    """One list per column for ``_bulk_upsert_sql``; jsonb values as JSON text (a list such as
    ``trace_links`` would otherwise make a ragged array, and mixing it with NULLs fails the batch)."""
    return [
        [_jsonb_text(getattr(x, c)) if t == "jsonb" else getattr(x, c) for x in items]
        for c, t in zip(cols, types, strict=True)
    ]


_encode_json = msgspec.json.Encoder().encode


def _jsonb_text(value: Any) -> str | None:
    return None if value is None else _encode_json(value).decode()


_UPSERT_INSTANCES = _bulk_upsert_sql(
    "workflow_instance", _INSTANCE_COLUMNS, _INSTANCE_TYPES, "id", _INSTANCE_UPDATABLE
)


async def _upsert_instances(conn: asyncpg.Connection, items: list[InstanceState]) -> None:
    # New rows go in arrival order so the seq column keeps the queue's FIFO order.
    items.sort(key=lambda i: (not i.new, i.created_at))
    columns = _bulk_columns(items, _INSTANCE_COLUMNS, _INSTANCE_TYPES)
    await conn.execute(_UPSERT_INSTANCES, *columns)


_STEP_COLUMNS, _STEP_TYPES = _columns(
    """
    instance_id:text step_id:text status:text attempts:int current_attempt_id:text retries_error:int
    retries_platform:int retries_timeout:int failure_ignored:bool params:jsonb outputs:jsonb error:text
    reason:jsonb created_at:timestamptz started_at:timestamptz ended_at:timestamptz signals:jsonb
    waiting_since:timestamptz progress:jsonb
"""
)
_UPSERT_STEPS = _bulk_upsert_sql(
    "step_run", _STEP_COLUMNS, _STEP_TYPES, "instance_id, step_id", _STEP_COLUMNS[2:]
)


async def _upsert_steps(conn: asyncpg.Connection, items: list[StepState]) -> None:
    columns = _bulk_columns(items, _STEP_COLUMNS, _STEP_TYPES)
    await conn.execute(_UPSERT_STEPS, *columns)


_ATTEMPT_COLUMNS, _ATTEMPT_TYPES = _columns(
    """
    id:text instance_id:text step_id:text attempt:int status:text failure_kind:text executor:text queue:text
    dispatched_at:timestamptz started_at:timestamptz ended_at:timestamptz outputs:jsonb error:text
    exit_code:int log_tail:text span_id:text stopping_until:timestamptz
"""
)
_UPSERT_ATTEMPTS = _bulk_upsert_sql(
    "step_attempt", _ATTEMPT_COLUMNS, _ATTEMPT_TYPES, "id", _ATTEMPT_COLUMNS[4:]
)


async def _upsert_attempts(conn: asyncpg.Connection, items: list[AttemptState]) -> None:
    columns = _bulk_columns(items, _ATTEMPT_COLUMNS, _ATTEMPT_TYPES)
    await conn.execute(_UPSERT_ATTEMPTS, *columns)


async def _restarted_first(conn: asyncpg.Connection, state: WorkflowState) -> None:
    """A restarted run went to the front of the queue (the latest restart first): keep it there when
    the queue is rebuilt from rows in arrival (seq) order."""
    restarted = [i for i in state.queue if state.instances[i].run_number > 1]
    if not restarted:
        return
    latest = {
        r["instance_id"]: r["last"]
        for r in await conn.fetch(
            "SELECT instance_id, max(id) AS last FROM timeline WHERE instance_id = ANY($1::text[]) "
            "AND event = 'restart_requested' GROUP BY instance_id",
            restarted,
        )
    }
    front = sorted(restarted, key=lambda i: -latest.get(i, 0))
    rest = [i for i in state.queue if i not in set(front)]
    state.queue = deque([*front, *rest])


async def load_workflow_state(conn: asyncpg.Connection, workflow_id: str) -> WorkflowState | None:
    """Rebuild an actor's state from Postgres (on activation, or after a failed transaction)."""
    row = await conn.fetchrow("SELECT * FROM workflow WHERE id = $1", workflow_id)
    if row is None:
        return None
    state = WorkflowState(row=WorkflowRow.from_record(row))
    recs = await conn.fetch(
        f"SELECT {', '.join(_INSTANCE_COLUMNS)}, seq FROM workflow_instance "
        "WHERE workflow_id = $1 AND status IN ('queued', 'running') ORDER BY seq",
        workflow_id,
    )
    running: list[str] = []
    counted = 0
    for r in recs:
        inst = InstanceState(**{c: r[c] for c in _INSTANCE_COLUMNS})
        state.instances[inst.id] = inst
        if inst.status == "queued":
            state.queue.append(inst.id)
        else:
            running.append(inst.id)
            if inst.under_strategy:
                counted += 1
    await _restarted_first(conn, state)
    if running:
        for r in await conn.fetch(
            f"SELECT {', '.join(_STEP_COLUMNS)} FROM step_run WHERE instance_id = ANY($1::text[])", running
        ):
            st = StepState(**{c: r[c] for c in _STEP_COLUMNS})
            state.instances[st.instance_id].steps[st.step_id] = st
        for r in await conn.fetch(
            f"""
            SELECT {", ".join("a." + c for c in _ATTEMPT_COLUMNS)} FROM step_attempt a
            JOIN step_run s ON s.current_attempt_id = a.id
            WHERE s.instance_id = ANY($1::text[])
            """,
            running,
        ):
            at = AttemptState(**{c: r[c] for c in _ATTEMPT_COLUMNS})
            state.instances[at.instance_id].attempts[at.id] = at
    held = sorted(
        (st.waiting_since or st.created_at, (st.reason or {}).get("queue", "default"), inst.id, st.step_id)
        for inst in state.instances.values()
        if inst.status == "running"
        for st in inst.steps.values()
        if st.status == "waiting" and (st.reason or {}).get("code") == DISPATCH_WAIT
    )
    for _since, queue, inst_id, step_id in held:
        state.dispatch_backlog.setdefault(str(queue), deque()).append((inst_id, step_id))
    state.count_unstarted()
    state.leaf_active = sum(
        1
        for inst in state.instances.values()
        for at in inst.attempts.values()
        if at.status in ("dispatched", "running")
    )
    for r in await conn.fetch(
        """
        SELECT a.id, a.instance_id, a.step_id, a.stopping_until FROM step_attempt a
        JOIN workflow_instance i ON i.id = a.instance_id
        WHERE a.stopping_until IS NOT NULL AND i.workflow_id = $1
        """,
        workflow_id,
    ):
        state.stopping[r["id"]] = StoppingAttempt(
            r["id"], r["instance_id"], r["step_id"], r["stopping_until"]
        )
    # Counters are derived from the rows, so a crash can never leave them drifted.
    state.row.running_count = counted
    state.row.queued_count = len(state.queue)
    return state
