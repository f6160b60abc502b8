"""Reading runs for the API: one run with its steps, attempts, timeline and "why not running", and lists."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec

from legato.core.admission import QUEUE_ORDER_SQL, QueueState, concurrency_limit, queue_state
from legato.core.progress import ForeachProgress, decode_progress, encode_progress
from legato.core.reasons import (
    Blocked,
    Paused,
    Queued,
    Reason,
    WaitingForPermit,
    WaitingForStop,
    decode_reason,
    encode_reason,
)
from legato.protocol.api import ApiError, ListInstances
from legato.trigger.replies import FIELD_LIMIT, capped, fit, shown, size_of, truncated


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def instance_summary(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "instance_id": r["id"],
        "workflow_id": r["workflow_id"],
        "version": r["version"],
        "status": r["status"],
        "reason": truncated(r["reason"], 4096),
        "error": truncated(r["error"], 4096),
        "trigger": truncated(r["trigger"], 4096),
        "run_number": r["run_number"],
        "seq": r["seq"],
        "created_at": iso(r["created_at"]),
        "started_at": iso(r["started_at"]),
        "ended_at": iso(r["ended_at"]),
        "parent_instance_id": r["parent_instance_id"],
    }


SUMMARY_COLUMNS = (
    "id, workflow_id, version, status, reason, error, trigger, run_number, seq, created_at, started_at, "
    "ended_at, parent_instance_id"
)


async def explain_queued(conn: asyncpg.Connection, rows: list[asyncpg.Record]) -> dict[str, Reason]:
    """Why queued runs are not running, from the current rows: place in the queue, the run ahead, what
    holds the slots, or the failed run that blocks the queue (computed on read, so never stale)."""
    out: dict[str, Reason] = {}
    for workflow_id in sorted({r["workflow_id"] for r in rows if r["status"] == "queued"}):
        wf = await conn.fetchrow(
            "SELECT run_strategy, max_concurrency, paused, paused_by, paused_reason, blocked_by, blocked_since "
            "FROM workflow WHERE id = $1",
            workflow_id,
        )
        if wf is None:
            continue
        active = await conn.fetch(
            "SELECT id, status FROM workflow_instance WHERE workflow_id = $1 AND status IN ('queued', 'running') "
            f"ORDER BY {QUEUE_ORDER_SQL}",
            workflow_id,
        )
        queue = [a["id"] for a in active if a["status"] == "queued"]
        holders = [a["id"] for a in active if a["status"] == "running"]
        where = {iid: i for i, iid in enumerate(queue)}
        stopping = await _stopping_attempts(conn, workflow_id)
        for r in rows:
            if r["workflow_id"] == workflow_id and r["id"] in where:
                out[r["id"]] = _queued_reason(wf, where[r["id"]], queue, holders, stopping)
    return out


async def _stopping_attempts(conn: asyncpg.Connection, workflow_id: str) -> list[asyncpg.Record]:
    """Attempts of ended runs not yet confirmed stopped: their runs still hold strategy slots."""
    return list(
        await conn.fetch(
            "SELECT a.id, a.instance_id, a.step_id, a.stopping_until FROM step_attempt a "
            "JOIN workflow_instance i ON i.id = a.instance_id "
            "WHERE a.stopping_until IS NOT NULL AND i.workflow_id = $1 ORDER BY a.stopping_until LIMIT 20",
            workflow_id,
        )
    )


def _queued_reason(
    wf: asyncpg.Record,
    index: int,
    queue: list[str],
    holders: list[str],
    stopping: list[asyncpg.Record] | None = None,
) -> Queued | Paused | Blocked | WaitingForStop:
    strategy = wf["run_strategy"]
    limit = concurrency_limit(strategy, wf["max_concurrency"])
    state = queue_state(strategy, wf["max_concurrency"], wf["paused"], wf["blocked_by"])
    ahead = queue[index - 1] if index else None
    place: dict[str, Any] = {
        "strategy": strategy,
        "position": index + 1,
        "behind": ahead,
        "limit": limit,
        "held_by": holders[:20],
    }
    if state is QueueState.PAUSED and wf["paused"]:
        message = (
            "workflow paused"
            + (f" by {wf['paused_by']}" if wf["paused_by"] else "")
            + (f": {wf['paused_reason']}" if wf["paused_reason"] else "")
        )
        return Paused(**place, message=message, paused_by=wf["paused_by"])
    if state is QueueState.PAUSED:
        return Paused(**place, message="max_concurrency is 0: the workflow is paused")
    if state is QueueState.BLOCKED:
        return Blocked(
            **place,
            blocked_by=wf["blocked_by"],
            blocked_since=iso(wf["blocked_since"]),
            message=f"blocked by failed run {wf['blocked_by']} (strict_sequential)"
            + (f" since {wf['blocked_since']:%Y-%m-%d %H:%M:%S} UTC" if wf["blocked_since"] else ""),
        )
    if stopping and len(holders) < limit:
        first = stopping[0]
        return WaitingForStop(
            **place,
            runs=sorted({s["instance_id"] for s in stopping}),
            attempts=[s["id"] for s in stopping],
            until=iso(first["stopping_until"]),
            message=(
                f"waiting for run {first['instance_id']} (step {first['step_id']}, attempt {first['id']}) "
                f"to confirm it stopped, at most until {first['stopping_until']:%Y-%m-%d %H:%M:%S} UTC"
            ),
        )
    where = f"queued at position {index + 1}" + (f" behind run {ahead}" if ahead else "")
    held = ", ".join(holders[:5]) + ("…" if len(holders) > 5 else "")
    return Queued(
        **place,
        message=f"{where}; concurrency limit {limit} held by {'runs ' + held if held else 'nothing yet'}",
    )


def explained_reason(why: dict[str, Reason], row: asyncpg.Record) -> dict[str, Any] | None:
    """The reason a run's reply shows: the live one ``explain_queued`` gave, else the stored one."""
    live = why.get(row["id"])
    return encode_reason(live) if live is not None else row["reason"]


async def get_instance(
    conn: asyncpg.Connection,
    instance_id: str,
    *,
    timeline_limit: int = 200,
    steps_limit: int = 1000,
    steps_offset: int = 0,
    order: list[str] | None = None,
    budget: int = 1_000_000,
) -> dict[str, Any]:
    """One run with a page of its steps (graph order, then steps added at run time) and counts for all
    of them, cut so the whole reply fits in ``budget`` bytes; ``steps_next`` is the next page's offset."""
    big = max(FIELD_LIMIT, budget // 8)  # a run's own params and outputs get more room than a step's
    parts = [capped("i", column, big) for column in ("params", "run_params", "outputs")]
    r = await conn.fetchrow(
        f"SELECT {', '.join(f'i.{c.strip()}' for c in SUMMARY_COLUMNS.split(','))}, i.trigger_key, i.unblocked, "
        f"i.traceparent, i.parent_step_id, i.parent_iteration, i.requested_at, {', '.join(p[0] for p in parts)} "
        f"FROM workflow_instance i {' '.join(p[1] for p in parts)} WHERE i.id = $1",
        instance_id,
    )
    if r is None:
        raise ApiError("not_found", f"unknown run {instance_id!r}", {"instance_id": instance_id})
    out = instance_summary(r)
    out.update(
        params=shown(r, "params", big),
        run_params=shown(r, "run_params", big),
        outputs=shown(r, "outputs", big),
        error=truncated(r["error"], FIELD_LIMIT),
        trigger_key=r["trigger_key"],
        unblocked=r["unblocked"],
        traceparent=r["traceparent"],
        trace_id=r["traceparent"].split("-")[1] if r["traceparent"] else None,
        parent_step_id=r["parent_step_id"],
        parent_iteration=r["parent_iteration"],
        requested_at=iso(r["requested_at"]),
        reason=explained_reason(await explain_queued(conn, [r]), r),
    )
    timeline = await conn.fetch(
        "SELECT at, step_id, event, message, actor, details FROM timeline WHERE instance_id = $1 "
        "ORDER BY id DESC LIMIT $2",
        instance_id,
        max(0, min(timeline_limit, 1000)),
    )
    out["timeline"] = [
        {
            "at": iso(t["at"]),
            "step_id": t["step_id"],
            "event": t["event"],
            "message": truncated(t["message"], 4096),
            "actor": t["actor"],
            "details": truncated(t["details"], 4096),
        }
        for t in reversed(timeline)
    ]
    # Newest timeline entries win when the timeline alone would not fit in half the budget.
    while out["timeline"] and size_of(out["timeline"]) > budget // 2:
        out["timeline"] = out["timeline"][len(out["timeline"]) // 4 + 1 :]
    await _add_steps(
        conn,
        out,
        order or [],
        offset=max(0, steps_offset),
        limit=max(0, min(steps_limit, 1000)),
        budget=budget,
    )
    return out


async def _add_steps(
    conn: asyncpg.Connection, out: dict[str, Any], order: list[str], *, offset: int, limit: int, budget: int
) -> None:
    instance_id = out["instance_id"]
    have = {
        s["step_id"]: s["status"]
        for s in await conn.fetch(
            "SELECT step_id, status FROM step_run WHERE instance_id = $1 ORDER BY created_at, step_id",
            instance_id,
        )
    }
    known = set(order)
    ids = list(order) + [sid for sid in have if sid not in known]
    counts: dict[str, int] = {}
    for sid in ids:
        status = have.get(sid, "pending")
        counts[status] = counts.get(status, 0) + 1
    out["steps_total"] = len(ids)
    out["step_counts"] = counts
    out["steps_offset"] = offset
    page_ids = ids[offset : offset + limit]
    parts = [capped("s", column, FIELD_LIMIT) for column in ("params", "outputs")]
    steps = await conn.fetch(
        "SELECT s.step_id, s.status, s.attempts, s.current_attempt_id, s.retries_error, s.retries_platform, "
        "s.retries_timeout, s.failure_ignored, s.error, s.reason, s.created_at, s.started_at, s.ended_at, "
        f"s.progress, s.signals, {', '.join(p[0] for p in parts)} FROM step_run s {' '.join(p[1] for p in parts)} "
        "WHERE s.instance_id = $1 AND s.step_id = ANY($2::text[])",
        instance_id,
        page_ids,
    )
    attempts = await conn.fetch(
        "SELECT id, step_id, attempt, status, failure_kind, executor, queue, dispatched_at, started_at, ended_at, "
        "outputs, error, exit_code, log_tail FROM step_attempt WHERE instance_id = $1 AND step_id = ANY($2::text[]) "
        "ORDER BY step_id, attempt",
        instance_id,
        page_ids,
    )
    by_step: dict[str, list[dict[str, Any]]] = {}
    for a in attempts:
        by_step.setdefault(a["step_id"], []).append(
            {
                "attempt_id": a["id"],
                "attempt": a["attempt"],
                "status": a["status"],
                "failure_kind": a["failure_kind"],
                "executor": a["executor"],
                "queue": a["queue"],
                "dispatched_at": iso(a["dispatched_at"]),
                "started_at": iso(a["started_at"]),
                "ended_at": iso(a["ended_at"]),
                "outputs": truncated(a["outputs"]),
                "error": truncated(a["error"]),
                "exit_code": a["exit_code"],
                "log_tail": truncated(a["log_tail"]),
            }
        )
    live = {
        s["step_id"]: encode_reason(await live_step_reason(conn, decode_reason(s["reason"])))
        for s in steps
        if s["status"] == "waiting"
    }
    rows = {s["step_id"]: s for s in steps}

    def render(sid: str) -> dict[str, Any]:
        s = rows.get(sid)
        if s is None:
            return _pending_step(sid)
        return {
            "step_id": sid,
            "status": s["status"],
            "attempts": by_step.get(sid, []),
            "retries": {
                "error": s["retries_error"],
                "platform": s["retries_platform"],
                "timeout": s["retries_timeout"],
            },
            "failure_ignored": s["failure_ignored"],
            "params": shown(s, "params", FIELD_LIMIT),
            "outputs": shown(s, "outputs", FIELD_LIMIT),
            "error": truncated(s["error"]),
            "reason": live.get(sid, s["reason"]),
            "created_at": iso(s["created_at"]),
            "started_at": iso(s["started_at"]),
            "ended_at": iso(s["ended_at"]),
            "signals": truncated(s["signals"]),
            "progress": _progress_view(s["progress"]),
        }

    room = budget - size_of(out) - 64
    out["steps"] = fit(page_ids, room, render)
    end = offset + len(out["steps"])
    out["steps_next"] = end if end < len(ids) else None


def _pending_step(sid: str) -> dict[str, Any]:
    return {
        "step_id": sid,
        "status": "pending",
        "attempts": [],
        "retries": {"error": 0, "platform": 0, "timeout": 0},
        "failure_ignored": False,
        "params": None,
        "outputs": None,
        "error": None,
        "reason": None,
        "created_at": None,
        "started_at": None,
        "ended_at": None,
    }


async def live_step_reason(conn: asyncpg.Connection, reason: Reason | None) -> Reason | None:
    """A step waiting for a tag permit: the tag's current limit, use and holders (not those of when it
    began to wait); any other reason as stored."""
    if not isinstance(reason, WaitingForPermit):
        return reason
    tag = reason.tag
    limit = await conn.fetchval("SELECT max_running FROM concurrency_tag WHERE tag = $1", tag)
    in_use = int(await conn.fetchval("SELECT count(*) FROM tag_permit WHERE tag = $1", tag))
    holders = [
        f"{r['instance_id']}/{r['step_id']}"
        for r in await conn.fetch(
            "SELECT instance_id, step_id FROM tag_permit WHERE tag = $1 ORDER BY acquired_at LIMIT 5", tag
        )
    ]
    held = ", ".join(holders) + ("…" if in_use > len(holders) else "")
    return msgspec.structs.replace(
        reason,
        limit=limit,
        in_use=in_use,
        held_by=holders,
        message=f"waiting for tag permit {tag} ({in_use}/{limit} held" + (f" by {held})" if held else ")"),
    )


def _progress_view(stored: dict[str, Any] | None) -> dict[str, Any] | None:
    """Counts per status and the first failed items of a foreach/loop/subworkflow step (never 100k ids)."""
    progress = decode_progress(stored) if stored else None
    if progress is None:
        return None
    shown = encode_progress(progress) or {}
    view = {k: v for k, v in shown.items() if k not in ("failed_items", "retry", "children", "last")}
    failed = (
        progress.failed_items if isinstance(progress, ForeachProgress) else shown.get("failed_items") or []
    )
    view["failed_items"] = sorted(failed)[:100]
    view["failed_items_total"] = len(failed)
    if isinstance(progress, ForeachProgress):
        view["pending"] = max(0, progress.total - progress.next) + len(progress.retry)
    return view


def iterations_query(
    instance_id: str, step_id: str, *, status: str | None, after: int | None, limit: int
) -> tuple[str, list[Any]]:
    """The statement and arguments of one page of a step's iterations (``limit`` + 1 rows: whether there
    is more), each by its latest child run (a retried iteration has several: the one no later run of
    the same iteration follows), filtered by status and cut to the page in the query. It reads the
    children index in iteration order from ``after`` and stops at the page's end, never every iteration
    of a 100,000-item foreach for each page. Only the filters given are in the statement: the API's
    sessions plan a statement once, and a generic plan of ``$n IS NULL OR ...`` cannot start the index
    scan at ``after``."""
    args: list[Any] = [instance_id, step_id]
    same = "n.parent_instance_id = $1 AND n.parent_step_id = $2 AND n.parent_iteration = c.parent_iteration"
    where = "c.parent_instance_id = $1 AND c.parent_step_id = $2"
    if after is not None:
        args.append(after)
        where += f" AND c.parent_iteration > ${len(args)}"
        same += f" AND n.parent_iteration > ${len(args)}"  # the anti-join's scan starts there too
    if status:
        args.append(status)
        where += f" AND c.status = ${len(args)}"
    args.append(limit + 1)
    return (
        f"SELECT {SUMMARY_COLUMNS}, parent_iteration, outputs FROM workflow_instance c WHERE {where} "
        f"AND NOT EXISTS (SELECT 1 FROM workflow_instance n WHERE {same} AND n.seq > c.seq) "
        f"ORDER BY c.parent_iteration LIMIT ${len(args)}",
        args,
    )


async def list_iterations(
    conn: asyncpg.Connection,
    instance_id: str,
    step_id: str,
    *,
    status: str | None,
    after: int | None,
    limit: int,
    budget: int = 1_000_000,
) -> dict[str, Any]:
    sql, args = iterations_query(instance_id, step_id, status=status, after=after, limit=limit)
    rows = await conn.fetch(sql, *args)
    out = [
        {**instance_summary(r), "iteration": r["parent_iteration"], "outputs": truncated(r["outputs"])}
        for r in rows
    ]
    page = fit(out[:limit], budget, lambda row: row)
    return {"iterations": page, "next": page[-1]["iteration"] if len(page) < len(out) and page else None}


async def list_instances(
    conn: asyncpg.Connection, query: ListInstances, *, budget: int = 1_000_000
) -> dict[str, Any]:
    """One page of ``query``'s runs, newest first, within ``budget`` bytes; ``next_cursor`` when more."""
    sql, args = listing_query(query)
    rows = await conn.fetch(sql, *args)
    why = await explain_queued(conn, rows[: query.limit])
    page = fit(
        rows[: query.limit], budget, lambda r: {**instance_summary(r), "reason": explained_reason(why, r)}
    )
    more = len(page) < len(rows)
    return {"instances": page, "next_cursor": page[-1]["seq"] if more and page else None}


def listing_query(query: ListInstances) -> tuple[str, list[Any]]:
    """The statement and arguments of one page of runs, newest first (``limit`` + 1 rows: whether
    there is more). Without children, each form reads an index of top-level runs only (migration
    0101), so child runs are never walked over, however many there are."""
    clauses: list[str] = [] if query.include_children else ["parent_instance_id IS NULL"]
    args: list[Any] = []

    def add(sql: str, value: Any) -> None:
        args.append(value)
        clauses.append(sql.replace("?", f"${len(args)}"))

    if query.workflow_id:
        add("workflow_id = ?", query.workflow_id)
    if query.status:
        add("status = ?", query.status)
    if query.since is not None:
        add("created_at >= ?", datetime.fromtimestamp(query.since, UTC))
    if query.until is not None:
        add("created_at < ?", datetime.fromtimestamp(query.until, UTC))
    if query.cursor is not None:
        add("seq < ?", query.cursor)
    where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    args.append(query.limit + 1)
    return (
        f"SELECT {SUMMARY_COLUMNS} FROM workflow_instance {where} ORDER BY seq DESC LIMIT ${len(args)}",
        args,
    )
