"""Every SQL statement of the scheduler's runs, steps, attempts, timeline, timers, tag permits and
operator actions: how an actor's state is loaded and how a batch's ``UnitOfWork`` is written back.

The actor, the engine and the timer and liveness loops call these functions and never write SQL
themselves. Partition leases are the exception: ``leases.py`` is a self-contained component whose
statements (on its own connection, with its own locking protocol) only it runs.
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg
import msgspec

from legato.core.admission import queue_priority
from legato.core.progress import OtherProgress, decode_progress
from legato.core.reasons import OtherReason, WaitingForDispatchSlot, decode_reason
from legato.scheduler.mailbox import TimerFired
from legato.scheduler.state import (
    AttemptState,
    InstanceState,
    StepState,
    StoppingAttempt,
    TagState,
    WorkflowRow,
    WorkflowState,
)
from legato.store.keys import probe

if TYPE_CHECKING:
    from legato.scheduler.leases import LeaseGuard

# ------------------------------------------------------------------ column lists and bulk upserts


def _columns(spec: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``"name:type name:type …"`` -> (names, Postgres types) for bulk statements."""
    pairs = [item.split(":") for item in spec.split()]
    return tuple(n for n, _ in pairs), tuple(t for _, t in pairs)


_INSTANCE_COLUMNS, _INSTANCE_TYPES = _columns(
    """
    id:text workflow_id:text version:int trigger_key:text trigger:jsonb status:text reason:jsonb params:jsonb
    run_params:jsonb outputs:jsonb error:text run_number:int unblocked:bool parent_instance_id:text
    parent_step_id:text parent_iteration:int root_instance_id:text traceparent:text requested_at:timestamptz
    created_at:timestamptz started_at:timestamptz ended_at:timestamptz body_path:text under_strategy:bool
    trace_parent:text trace_links:jsonb notify_seq:int
"""
)
_INSTANCE_UPDATABLE = tuple(
    [
        "status",
        "reason",
        "params",
        "outputs",
        "error",
        "run_number",
        "unblocked",
        "started_at",
        "ended_at",
        "notify_seq",
    ]
)


def bulk_upsert_sql(
    table: str,
    cols: tuple[str, ...],
    types: tuple[str, ...],
    key: str | None,
    updatable: tuple[str, ...],
    first: int = 1,
) -> str:
    """An upsert (an insert when ``key`` is None) of the rows of ``$first`` (``bulk_rows``), in their
    order; a JSON null is an SQL NULL, in jsonb columns too."""
    values = ", ".join(
        f"nullif(e->{i}, 'null'::jsonb)" if t == "jsonb" else f"(e->>{i})::{t}" for i, t in enumerate(types)
    )
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in updatable)
    rows = f"jsonb_array_elements(${first}::text::jsonb) AS e"
    insert = f"INSERT INTO {table} ({', '.join(cols)}) SELECT {values} FROM {rows}"
    return insert if key is None else f"{insert} ON CONFLICT ({key}) DO UPDATE SET {sets}"


def _stored_as_read(value: Any) -> Any:
    if isinstance(value, (OtherReason, OtherProgress)):  # written by another version: stored back as it was
        return value.raw
    raise NotImplementedError(f"cannot write a {type(value).__name__} to a bulk row")


encode_rows = msgspec.json.Encoder(enc_hook=_stored_as_read).encode


def bulk_rows(items: Sequence[object], cols: tuple[str, ...]) -> str:
    """The argument of ``bulk_upsert_sql``: one JSON array per row, its values in the order of ``cols``.
    One argument per part (not one array per column: 60-90 for a one-run batch), of arrays (not objects:
    for 1-500 step rows ~4x cheaper to encode, and read 2-45 % faster by Postgres)."""
    row = operator.attrgetter(*cols)  # a tuple of the columns (every part has several)
    return encode_rows([row(x) for x in items]).decode()


def _instance(r: asyncpg.Record) -> InstanceState:
    """A ``workflow_instance`` row as state, its reason decoded once."""
    return InstanceState(
        **{c: r[c] for c in _INSTANCE_COLUMNS if c != "reason"},
        reason=decode_reason(r["reason"]),
        published_status=r["status"],
    )


def _step(r: asyncpg.Record) -> StepState:
    """A ``step_run`` row as state, its reason and progress decoded once."""
    return StepState(
        **{c: r[c] for c in _STEP_COLUMNS if c not in ("reason", "progress")},
        reason=decode_reason(r["reason"]),
        progress=decode_progress(r["progress"]),
        published_status=r["status"],
    )


_STEP_COLUMNS, _STEP_TYPES = _columns(
    """
    instance_id:text step_id:text status:text attempts:int current_attempt_id:text retries_error:int
    retries_platform:int retries_timeout:int failure_ignored:bool params:jsonb outputs:jsonb error:text
    reason:jsonb created_at:timestamptz started_at:timestamptz ended_at:timestamptz signals:jsonb
    waiting_since:timestamptz progress:jsonb notify_seq:int
"""
)
_ATTEMPT_COLUMNS, _ATTEMPT_TYPES = _columns(
    """
    id:text instance_id:text step_id:text attempt:int status:text failure_kind:text executor:text queue:text
    dispatched_at:timestamptz started_at:timestamptz ended_at:timestamptz outputs:jsonb error:text
    exit_code:int log_tail:text span_id:text stopping_until:timestamptz
"""
)
_TIMELINE_COLUMNS, _TIMELINE_TYPES = _columns(
    "instance_id:text step_id:text at:timestamptz event:text message:text actor:text details:jsonb"
)
_TIMER_COLUMNS, _TIMER_TYPES = _columns(
    "partition:int workflow_id:text instance_id:text step_id:text attempt_id:text kind:text "
    "fire_at:timestamptz payload:jsonb"
)
# The rows a flush writes in one statement, by part: (table, columns, types, conflict key (None: insert
# only), columns updated on conflict).
BULK_PARTS = {
    "instances": ("workflow_instance", _INSTANCE_COLUMNS, _INSTANCE_TYPES, "id", _INSTANCE_UPDATABLE),
    "steps": ("step_run", _STEP_COLUMNS, _STEP_TYPES, "instance_id, step_id", _STEP_COLUMNS[2:]),
    "attempts": ("step_attempt", _ATTEMPT_COLUMNS, _ATTEMPT_TYPES, "id", _ATTEMPT_COLUMNS[4:]),
    "timeline": ("timeline", _TIMELINE_COLUMNS, _TIMELINE_TYPES, None, ()),
    "timers": ("timer", _TIMER_COLUMNS, _TIMER_TYPES, None, ()),
}
_UPSERT_INSTANCES = bulk_upsert_sql(*BULK_PARTS["instances"])


async def upsert_instances(conn: asyncpg.Connection, items: list[InstanceState]) -> None:
    """Insert or update runs in one statement."""
    await conn.execute(_UPSERT_INSTANCES, bulk_rows(arrival_order(items), _INSTANCE_COLUMNS))


def arrival_order(items: Iterable[InstanceState]) -> list[InstanceState]:
    """New runs in arrival order, so the seq column keeps the queue's FIFO order."""
    return sorted(items, key=lambda i: (not i.new, i.created_at))


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


def _workflow_row(r: asyncpg.Record) -> WorkflowRow:
    return WorkflowRow(
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


# ------------------------------------------------------------------ loading an actor's state


async def load_workflow_state(conn: asyncpg.Connection, workflow_id: str) -> WorkflowState | None:
    """Rebuild an actor's state from Postgres (on activation, or after a failed transaction)."""
    row = await conn.fetchrow("SELECT * FROM workflow WHERE id = $1", workflow_id)
    if row is None:
        return None
    state = WorkflowState(row=_workflow_row(row))
    recs = await conn.fetch(
        f"SELECT {', '.join(_INSTANCE_COLUMNS)}, seq FROM workflow_instance "
        "WHERE workflow_id = $1 AND status IN ('queued', 'running') ORDER BY seq",
        workflow_id,
    )
    running: list[str] = []
    counted = 0
    for r in recs:
        inst = _instance(r)
        state.instances[inst.id] = inst
        if inst.status == "queued":
            state.queue.append(inst.id)
        else:
            running.append(inst.id)
            if inst.under_strategy:
                counted += 1
    await _restarted_first(conn, state)
    # Start order: priority, then the order above (a stable sort; live runs are all of one priority).
    state.queue = deque(sorted(state.queue, key=lambda i: -queue_priority(state.instances[i].trigger)))
    if running:
        for r in await conn.fetch(
            f"SELECT {', '.join(_STEP_COLUMNS)} FROM step_run WHERE instance_id = ANY($1::text[])", running
        ):
            st = _step(r)
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
        (st.waiting_since or st.created_at, st.reason.queue, inst.id, st.step_id)
        for inst in state.instances.values()
        if inst.status == "running"
        for st in inst.steps.values()
        if st.status == "waiting" and isinstance(st.reason, WaitingForDispatchSlot)
    )
    for _since, queue, inst_id, step_id in held:
        state.dispatch_backlog.setdefault(str(queue), deque()).append((inst_id, step_id))
    state.index_dispatched()
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


async def load_ended_run(conn: asyncpg.Connection, instance_id: str) -> InstanceState | None:
    """A run the actor does not hold (ended), with its steps and their current attempts."""
    r = await conn.fetchrow(
        f"SELECT {', '.join(_INSTANCE_COLUMNS)} FROM workflow_instance WHERE id = $1", instance_id
    )
    if r is None:
        return None
    inst = _instance(r)
    for s in await conn.fetch(
        f"SELECT {', '.join(_STEP_COLUMNS)} FROM step_run WHERE instance_id = $1", instance_id
    ):
        st = _step(s)
        inst.steps[st.step_id] = st
    for a in await conn.fetch(
        f"SELECT {', '.join('a.' + c for c in _ATTEMPT_COLUMNS)} FROM step_attempt a "
        "JOIN step_run s ON s.current_attempt_id = a.id WHERE s.instance_id = $1",
        instance_id,
    ):
        at = AttemptState(**{c: a[c] for c in _ATTEMPT_COLUMNS})
        inst.attempts[at.id] = at
    return inst


@dataclass(frozen=True, slots=True)
class WorkflowConfig:
    """The workflow row's columns the API may change between batches (the actor owns the others)."""

    active: bool
    active_version: int
    run_strategy: str
    max_concurrency: int
    paused: bool

    @classmethod
    def of(cls, row: WorkflowRow) -> WorkflowConfig:
        return cls(row.active, row.active_version, row.run_strategy, row.max_concurrency, row.paused)


def existing_runs(ids: str) -> str:
    """Which of the run ids ``ids`` (an SQL array) exist: an index probe per id (``store.keys``)."""
    return f"SELECT r.id FROM {probe('workflow_instance', 'id', ids, 'id')} AS r"


# By whether the batch starts runs: without starts, no probe, and a statement Postgres plans once (with
# one, the probe's ``unnest`` makes it plan for each batch's ids, see ``store.pool``).
_LOCK_WORKFLOW = {
    probing: f"SELECT {{guard}} AS lease, {existing} AS existing, w.* FROM (SELECT 1) AS one LEFT JOIN"
    " LATERAL (SELECT active, active_version, run_strategy, max_concurrency, paused FROM workflow"
    " WHERE id = $1 FOR UPDATE) AS w ON true"
    for probing, existing in ((True, f"ARRAY({existing_runs('$2::text[]')})"), (False, "NULL::text[]"))
}


async def lock_workflow(
    conn: asyncpg.Connection, workflow_id: str, guard: LeaseGuard, start_ids: list[str]
) -> tuple[WorkflowConfig | None, set[str]]:
    """In one statement: check the lease (``guard``), lock the workflow row for the batch and read its
    configuration (None if it was deleted), and find which of ``start_ids`` exist (one run per trigger
    key). Its snapshot predates its wait for the row lock, as fresh as a probe after it: only this actor
    writes the workflow's runs under that lock, a partition's new owner runs it only once the old owner
    committed or cannot (``leases.py``), and the API's pause, push and delete write no run."""
    probing = bool(start_ids)
    sql = _LOCK_WORKFLOW[probing].format(guard=guard.sql(3 if probing else 2))
    row = await conn.fetchrow(sql, workflow_id, *([start_ids] if probing else []), *guard.args)
    guard.verify(row["lease"])
    existing = set(row["existing"] or ())
    if row["active"] is None:
        return None, existing
    cols = ("active", "active_version", "run_strategy", "max_concurrency", "paused")
    return WorkflowConfig(*(row[c] for c in cols)), existing


async def definitions(conn: asyncpg.Connection, workflow_id: str, versions: list[int]) -> dict[int, str]:
    """The stored definitions (JSON text) of these versions; a missing version is absent."""
    rows = await conn.fetch(
        "SELECT version, definition::text AS definition FROM workflow_version "
        "WHERE workflow_id = $1 AND version = ANY($2::int[])",
        workflow_id,
        versions,
    )
    return {r["version"]: r["definition"] for r in rows}


async def lock_tags(conn: asyncpg.Connection, names: list[str]) -> dict[str, TagState]:
    """Lock and load named concurrency tags (in tag order: no deadlocks), their permits and waiters."""
    names = sorted(names)
    tags: dict[str, TagState] = {}
    if not names:
        return tags
    limits = {
        r["tag"]: r["max_running"]
        for r in await conn.fetch(
            "SELECT tag, max_running FROM concurrency_tag WHERE tag = ANY($1::text[]) ORDER BY tag FOR UPDATE",
            names,
        )
    }
    in_use = {
        r["tag"]: r["n"]
        for r in await conn.fetch(
            "SELECT tag, count(*) AS n FROM tag_permit WHERE tag = ANY($1::text[]) GROUP BY tag", names
        )
    }
    for tag in names:
        tags[tag] = TagState(tag=tag, limit=limits.get(tag), in_use=int(in_use.get(tag, 0)))
    for r in await conn.fetch(
        "SELECT tag, since, workflow_id, instance_id, step_id FROM tag_waiter WHERE tag = ANY($1::text[]) "
        "ORDER BY since",
        names,
    ):
        tags[r["tag"]].waiters.append((r["since"], r["workflow_id"], r["instance_id"], r["step_id"]))
    return tags


@dataclass(frozen=True, slots=True)
class IterationResult:
    """The latest run of one foreach iteration."""

    iteration: int
    status: str
    outputs: dict[str, Any] | None


async def foreach_iterations(
    conn: asyncpg.Connection, instance_id: str, step_id: str
) -> list[IterationResult]:
    """The latest run of each iteration of a foreach step, in item order."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (parent_iteration) parent_iteration, status, outputs FROM workflow_instance "
        "WHERE parent_instance_id = $1 AND parent_step_id = $2 ORDER BY parent_iteration, seq DESC",
        instance_id,
        step_id,
    )
    return [IterationResult(r["parent_iteration"], r["status"], r["outputs"]) for r in rows]


async def action_recorded(conn: asyncpg.Connection, action_id: str) -> bool:
    """True if this operator action was applied (or refused) before."""
    return await conn.fetchval("SELECT result FROM operator_action WHERE id = $1", action_id) is not None


# ------------------------------------------------------------------ timers


async def due_timers(conn: asyncpg.Connection, partitions: list[int], limit: int) -> list[TimerFired]:
    """The timers of these partitions that are due, oldest first, as their actors' messages."""
    rows = await conn.fetch(
        "SELECT id, workflow_id, instance_id, kind, step_id, attempt_id FROM timer "
        "WHERE partition = ANY($1::int[]) AND fire_at <= now() ORDER BY fire_at LIMIT $2",
        partitions,
        limit,
    )
    return [
        TimerFired(r["id"], r["workflow_id"], r["instance_id"], r["kind"], r["step_id"], r["attempt_id"])
        for r in rows
    ]


async def seconds_to_next_timer(conn: asyncpg.Connection, partitions: list[int]) -> float | None:
    """Seconds until the next timer of these partitions is due (negative if late); None if none."""
    wait = await conn.fetchval(
        "SELECT extract(epoch FROM min(fire_at) - now()) FROM timer WHERE partition = ANY($1::int[])",
        partitions,
    )
    return None if wait is None else float(wait)


async def take_timer(conn: asyncpg.Connection, timer_id: int) -> bool:
    """Delete a timer that fires now; False if it fired before or was cancelled (exactly once)."""
    return await conn.fetchval("DELETE FROM timer WHERE id = $1 RETURNING id", timer_id) is not None


# ------------------------------------------------------------------ executor liveness


@dataclass(frozen=True, slots=True)
class UnsettledAttempt:
    """An attempt not settled yet (dispatched, running, or cancelled and not confirmed stopped)."""

    id: str
    workflow_id: str
    instance_id: str
    step_id: str
    status: str
    executor: str | None
    started_at: datetime | None
    dead_error: str | None  # the error of its dead-lettered work item, if it was dead-lettered


async def unsettled_attempts(
    conn: asyncpg.Connection, work_stream: str, older_than: float, limit: int
) -> list[UnsettledAttempt]:
    """Unsettled attempts dispatched more than ``older_than`` seconds ago, oldest first."""
    rows = await conn.fetch(
        """
        SELECT a.id, a.instance_id, a.step_id, a.status, a.executor, a.started_at,
               i.workflow_id,
               (SELECT d.error FROM dead_letter d WHERE d.msg_id = a.id AND d.stream = $1 LIMIT 1)
                   AS dead_error
        FROM step_attempt a JOIN workflow_instance i ON i.id = a.instance_id
        WHERE (a.status IN ('dispatched', 'running') OR a.stopping_until IS NOT NULL)
          AND a.dispatched_at < now() - make_interval(secs => $2)
        ORDER BY a.dispatched_at
        LIMIT $3
        """,
        work_stream,
        older_than,
        limit,
    )
    return [
        UnsettledAttempt(
            r["id"],
            r["workflow_id"],
            r["instance_id"],
            r["step_id"],
            r["status"],
            r["executor"],
            r["started_at"],
            r["dead_error"],
        )
        for r in rows
    ]
