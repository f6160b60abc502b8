"""How an actor's batch is written back: its ``UnitOfWork`` in one statement of data-modifying CTEs
(``flush``), the rarer writes that must follow it, and the checks a batch without a transaction block
makes in that one statement.

A batch is one transaction that holds the workflow row lock from its first statement (BEGIN, the
lock, the flush, COMMIT: ``repository.lock_workflow``, then ``flush``). The common batch needs none
of that before it writes (``WorkflowActor._apply``): its messages only compute, so it computes with
the configuration in memory, takes each start whose run is not in memory for a new run (``Unlocked``),
and writes in the flush's one statement outside a transaction block, which commits as it ends. That
statement checks itself and writes nothing unless what the batch assumed still holds: it locks the
workflow row where the row still has that configuration, finds none of the runs it started in the
table, and finds the lease; ``legato_batch_check`` (migration 0099) raises ``LG001`` for a lost lease
(``LeaseLost``) and ``LG002`` otherwise (``WorkflowChangedUnderBatch``: the actor computes the batch
again from Postgres, locked). A batch that must write more than one statement begins its transaction
when that becomes known (``lock_late``), taking the lock and making the same checks first. Either way
its writes are those of the locked batch: only this actor writes the workflow's runs while it holds
the lease, and the configuration it used is the one the lock sees at commit, so no batch computed
before an API's pause, push or delete commits after it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import asyncpg

from legato.scheduler import repository
from legato.scheduler.repository import (
    BULK_PARTS,
    WorkflowConfig,
    arrival_order,
    bulk_rows,
    bulk_upsert_sql,
    encode_rows,
)
from legato.scheduler.state import UnitOfWork, WorkflowRow
from legato.store import outbox
from legato.store.keys import probe
from legato.store.outbox import OUTBOX_ARGS, OUTBOX_IDS, outbox_args, outbox_ctes, outbox_rows

if TYPE_CHECKING:
    from legato.scheduler.leases import LeaseGuard


@dataclass
class Unlocked:
    """A batch computing without the workflow row lock, while it has no transaction block: the
    configuration it computes with, and the runs it starts as new ones (not in memory)."""

    stack: contextlib.AsyncExitStack
    config: WorkflowConfig
    new_runs: list[str]


async def lock_late(
    conn: asyncpg.Connection, workflow_id: str, guard: LeaseGuard, unlocked: Unlocked
) -> None:
    """Give a batch computed so far without a transaction block its transaction (in ``unlocked``'s
    stack): begin it, lock the workflow row and check that the configuration is the one the batch used
    and that the runs it started are new (``WorkflowChangedUnderBatch`` if not: nothing was written)."""
    await unlocked.stack.enter_async_context(conn.transaction())
    config, existing = await repository.lock_workflow(conn, workflow_id, guard, unlocked.new_runs)
    if config != unlocked.config:
        raise WorkflowChangedUnderBatch("the workflow changed while the batch computed")
    if existing:
        raise WorkflowChangedUnderBatch("a run the batch started exists already")


_CANCEL_TIMERS = (
    "DELETE FROM timer t USING unnest(${0}::text[], ${1}::text[], ${2}::text[]) AS c (instance_id, kind, step_id) "
    "WHERE t.instance_id = c.instance_id AND (c.kind IS NULL OR t.kind = c.kind) "
    "AND (c.step_id IS NULL OR t.step_id = c.step_id)"
)
_UPDATE_WORKFLOW = (
    "UPDATE workflow SET running_count = ${1}::int, queued_count = ${2}::int, blocked_by = ${3}::text, "
    "blocked_since = ${4}::timestamptz, updated_at = now() WHERE id = ${0}::text"
)
# The other parts of a flush's statement: SQL whose arguments are numbered from {0}, and how many.
_STATEMENT_PARTS = {"cancel_timers": (_CANCEL_TIMERS, 3), "workflow": (_UPDATE_WORKFLOW, 5)}
# A batch without a transaction block (``flush``'s ``unlocked``): the workflow row must still have the
# configuration the batch was computed with, checked (and the row locked until the statement commits)
# by the one part of the statement that touches that row: the counters' update when it has one, else a
# locking read. Arguments from {0}: the five configuration columns.
_CONFIG_IS = (
    "(active, active_version, run_strategy, max_concurrency, paused) IS NOT DISTINCT FROM "
    "(${0}::bool, ${1}::int, ${2}::text, ${3}::int, ${4}::bool)"
)
_LOCK_UNCHANGED = "SELECT 1 FROM workflow WHERE id = ${5}::text AND " + _CONFIG_IS + " FOR UPDATE"
CONFIG_ARGS = 5
# ...and none of the runs it started (ids in a JSON array, argument {0}) existed before the statement
# (which sees the table as it began). The ids come as JSON, not as a text[]: Postgres plans a statement
# with an ``unnest`` of its parameter for each call's array (``store.pool``), and this one is large.
# One index probe per id (``store.keys``): as ``EXISTS`` over the elements, its plan read the whole table.
_RUNS_NEW = f"NOT EXISTS (SELECT 1 FROM {probe('workflow_instance', 'id', '${0}', '1', json=True)} AS hit)"


class WorkflowChangedUnderBatch(Exception):
    """A batch computed without the workflow row lock found the row changed (or gone) when it wrote:
    nothing was written; the actor computes the batch again from fresh state, in a transaction."""


# The SQLSTATEs ``legato_batch_check`` (migration 0099) raises.
_LEASE_LOST_STATE = "LG001"
_WORKFLOW_CHANGED_STATE = "LG002"


def _flush_sql(
    parts: tuple[str, ...], guard: LeaseGuard | None, checked: bool = False, probing: bool = False
) -> str:
    """The one statement of a flush: a data-modifying CTE per part, then ``guard``. The parts cannot see
    each other's rows, so no two touch the same rows: only the timer cancellations and the new timers
    share a table, and a cancellation must not drop the timers the flush adds.

    ``checked``: the statement commits on its own (``flush``'s ``unlocked``), so it aborts itself
    (``legato_batch_check``) unless the lease holds, the workflow row is as the batch read it and
    (``probing``) the runs it started are new."""
    ctes: list[str] = []
    n = 1  # the next argument's number
    for part in parts:
        if part == "outbox":
            ctes.append(outbox_ctes(n))
            n += OUTBOX_ARGS
        elif part == "events":
            ctes.append(outbox.event_outbox_cte(n))
            n += outbox.EVENT_OUTBOX_ARGS
        elif part in _STATEMENT_PARTS:
            sql, count = _STATEMENT_PARTS[part]
            sql = sql.format(*range(n, n + count))
            n += count
            if checked and part == "workflow":  # the counters' update is the check and the row lock
                sql += f" AND {_CONFIG_IS.format(*range(n, n + CONFIG_ARGS))} RETURNING 1"
                n += CONFIG_ARGS
            ctes.append(f"w_{part} AS ({sql})")
        else:
            table, cols, types, key, updatable = BULK_PARTS[part]
            ctes.append(f"w_{part} AS ({bulk_upsert_sql(table, cols, types, key, updatable, n)})")
            n += 1
    if checked and "workflow" not in parts:
        ctes.append(f"w_unchanged AS ({_LOCK_UNCHANGED.format(*range(n, n + CONFIG_ARGS + 1))})")
        n += CONFIG_ARGS + 1
    runs_new = "true"
    if checked and probing:
        runs_new = _RUNS_NEW.format(n)
        n += 1
    lease = guard.sql(n) if guard is not None else "true"
    if checked:
        unchanged = "w_workflow" if "workflow" in parts else "w_unchanged"
        lease = f"legato_batch_check({lease}, EXISTS (SELECT 1 FROM {unchanged}), {runs_new})"
    ids = OUTBOX_IDS if "outbox" in parts else "NULL::bigint[]"
    return f"WITH {', '.join(ctes)} SELECT {lease} AS lease, {ids} AS outbox_ids"


_FLUSH_SQL: dict[tuple[tuple[str, ...], bool | None, bool, bool], str] = {}  # by parts, guard, checks


# The statements that follow the flush's one, in this order (they update the rows it upserts): what
# they take from the unit of work, the statement, and each item's arguments. (``flush`` ends with the
# instances unblocked, one statement for them all.)
_FOLLOW: tuple[tuple[Callable[[UnitOfWork], Sequence[Any]], str, Callable[[Any], Any]], ...] = (
    (
        lambda u: u.stops_settled,
        "UPDATE step_attempt SET stopping_until = NULL, ended_at = coalesce($2, ended_at), "
        "log_tail = coalesce($3, log_tail), error = $4 WHERE id = $1",
        attrgetter("attempt_id", "ended_at", "log_tail", "error"),
    ),
    (
        lambda u: u.orphans_settled,
        "UPDATE step_attempt SET status = 'lost', failure_kind = 'platform', error = $2, "
        "ended_at = now() WHERE id = $1 AND status IN ('dispatched', 'running')",
        attrgetter("attempt_id", "error"),
    ),
    (
        lambda u: u.actions,
        "INSERT INTO operator_action (id, workflow_id, instance_id, action, actor, reason, result) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        attrgetter("action_id", "workflow_id", "instance_id", "action", "actor", "reason", "result"),
    ),
    (
        lambda u: u.permits_del,
        "DELETE FROM tag_permit WHERE tag = $1 AND attempt_id = $2",
        attrgetter("tag", "attempt_id"),
    ),
    (
        lambda u: u.permits_add,
        "INSERT INTO tag_permit (tag, attempt_id, workflow_id, instance_id, step_id) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        attrgetter("tag", "attempt_id", "workflow_id", "instance_id", "step_id"),
    ),
    (
        lambda u: u.waiters_del,
        "DELETE FROM tag_waiter WHERE tag = $1 AND instance_id = $2 AND step_id = $3",
        attrgetter("tag", "instance_id", "step_id"),
    ),
    (
        lambda u: u.waiters_add,
        "INSERT INTO tag_waiter (tag, workflow_id, instance_id, step_id, since) VALUES ($1, $2, $3, $4, $5) "
        "ON CONFLICT DO NOTHING",
        attrgetter("tag", "workflow_id", "instance_id", "step_id", "since"),
    ),
)


def needs_follow(uow: UnitOfWork) -> bool:
    """Whether writing ``uow`` takes statements after the flush's one (they update the rows it upserts):
    such a batch writes in a transaction block."""
    return bool(uow.unblocked_instances) or any(take(uow) for take, _, _ in _FOLLOW)


async def flush(
    conn: asyncpg.Connection,
    uow: UnitOfWork,
    wf: WorkflowRow,
    *,
    guard: LeaseGuard | None = None,
    unlocked: Unlocked | None = None,
) -> None:
    """Write everything ``uow`` recorded so far and start it afresh (a batch may flush more than once).

    ``guard``: the transaction's final lease check, run in the flush's last statement (so it costs no
    round trip of its own); ``LeaseLost`` if it fails.

    ``unlocked``: the batch runs outside a transaction block, and this one statement, which commits as
    it ends, is all it writes (``needs_follow`` is false): the statement locks the workflow row and
    writes nothing unless the row still has the configuration the batch used and none of the runs it
    started existed (``WorkflowChangedUnderBatch``), and the lease (``guard``, required) holds
    (``LeaseLost``)."""
    rows: dict[str, Sequence[object]] = {
        "instances": arrival_order(uow.instances.values()),
        "steps": list(uow.steps.values()),
        "attempts": list(uow.attempts.values()),
        "timeline": uow.timeline,
        "timers": uow.timers,
    }
    parts: list[str] = []
    args: list[Any] = []
    if cancels := list(uow.cancel_timers):  # beside the timers this flush adds: it cannot see them
        parts.append("cancel_timers")
        args += [[c.instance_id for c in cancels], [c.kind for c in cancels], [c.step_id for c in cancels]]
    for part, items in rows.items():
        if items:
            parts.append(part)
            args.append(bulk_rows(items, BULK_PARTS[part][1]))
    if uow.outbox:
        parts.append("outbox")
        args += outbox_args(uow.outbox)
    if uow.events:
        parts.append("events")
        args += outbox.event_outbox_args(uow.events)
    if uow.workflow_dirty:
        parts.append("workflow")
        args += [wf.id, wf.running_count, wf.queued_count, wf.blocked_by, wf.blocked_since]
    # The statements that must follow the bulk writes (they update the rows it upserts).
    follow = needs_follow(uow)
    fold = guard if not follow else None
    checked = unlocked is not None
    probing = False
    if unlocked is not None:
        if fold is None:
            raise ValueError("a flush outside a transaction block is one statement with the lease check")
        c = unlocked.config
        config = [c.active, c.active_version, c.run_strategy, c.max_concurrency, c.paused]
        # Right after the counters' arguments when the statement updates them (the workflow part is the
        # last), else with the workflow's id for a locking read of its own.
        args += config if "workflow" in parts else [*config, wf.id]
        if probing := bool(unlocked.new_runs):
            args.append(encode_rows(unlocked.new_runs).decode())
    if parts or checked:
        key = (tuple(parts), None if fold is None else fold.final, checked, probing)
        sql = _FLUSH_SQL.get(key) or _FLUSH_SQL.setdefault(key, _flush_sql(key[0], fold, checked, probing))
        try:
            row = await conn.fetchrow(sql, *args, *(fold.args if fold else ()))
        except asyncpg.PostgresError as exc:
            state = getattr(exc, "sqlstate", None)
            if checked and fold is not None and state == _LEASE_LOST_STATE:
                fold.verify(None)  # raises LeaseLost
            if checked and state == _WORKFLOW_CHANGED_STATE:
                raise WorkflowChangedUnderBatch(str(exc)) from exc
            raise
        if fold is not None:
            fold.verify(row["lease"])
        if uow.outbox:
            uow.outbox_rows += outbox_rows(row["outbox_ids"], uow.outbox)
    elif fold is not None:
        await fold.check(conn)
    for take, sql, row in _FOLLOW:
        if taken := take(uow):
            await conn.executemany(sql, [row(item) for item in taken])
    if uow.unblocked_instances:
        await conn.execute(
            "UPDATE workflow_instance SET unblocked = true WHERE id = ANY($1::text[])",
            uow.unblocked_instances,
        )
    if follow and guard is not None:
        await guard.check(conn)
    uow.written()
