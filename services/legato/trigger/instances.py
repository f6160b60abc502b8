"""Reading runs for the API: one run with its steps, attempts, timeline and "why not running", and lists."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg

from legato.protocol.api import ApiError


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def instance_summary(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "instance_id": r["id"],
        "workflow_id": r["workflow_id"],
        "version": r["version"],
        "status": r["status"],
        "reason": r["reason"],
        "error": r["error"],
        "trigger": r["trigger"],
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


async def explain_queued(conn: asyncpg.Connection, rows: list[asyncpg.Record]) -> dict[str, dict[str, Any]]:
    """Why queued runs are not running, from the current rows: place in the queue, the run ahead, what
    holds the slots, or the failed run that blocks the queue (computed on read, so never stale)."""
    out: dict[str, dict[str, Any]] = {}
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
            "ORDER BY seq",
            workflow_id,
        )
        queue = [a["id"] for a in active if a["status"] == "queued"]
        holders = [a["id"] for a in active if a["status"] == "running"]
        where = {iid: i for i, iid in enumerate(queue)}
        for r in rows:
            if r["workflow_id"] == workflow_id and r["id"] in where:
                out[r["id"]] = _queued_reason(wf, where[r["id"]], queue, holders)
    return out


def _queued_reason(wf: asyncpg.Record, index: int, queue: list[str], holders: list[str]) -> dict[str, Any]:
    strategy = wf["run_strategy"]
    limit = wf["max_concurrency"] if strategy == "parallel" else 1
    ahead = queue[index - 1] if index else None
    out: dict[str, Any] = {
        "code": "queued",
        "strategy": strategy,
        "position": index + 1,
        "behind": ahead,
        "limit": limit,
        "held_by": holders[:20],
    }
    if wf["paused"] or limit == 0:
        out["code"] = "paused"
        out["message"] = "max_concurrency is 0: the workflow is paused"
        if wf["paused"]:
            out["paused_by"] = wf["paused_by"]
            out["message"] = (
                "workflow paused"
                + (f" by {wf['paused_by']}" if wf["paused_by"] else "")
                + (f": {wf['paused_reason']}" if wf["paused_reason"] else "")
            )
    elif strategy == "strict_sequential" and wf["blocked_by"]:
        out["code"] = "blocked"
        out["blocked_by"] = wf["blocked_by"]
        out["blocked_since"] = iso(wf["blocked_since"])
        out["message"] = f"blocked by failed run {wf['blocked_by']} (strict_sequential)" + (
            f" since {wf['blocked_since']:%Y-%m-%d %H:%M:%S} UTC" if wf["blocked_since"] else ""
        )
    else:
        where = f"queued at position {index + 1}" + (f" behind run {ahead}" if ahead else "")
        held = ", ".join(holders[:5]) + ("…" if len(holders) > 5 else "")
        out["message"] = (
            f"{where}; concurrency limit {limit} held by {'runs ' + held if held else 'nothing yet'}"
        )
    return out


async def get_instance(
    conn: asyncpg.Connection, instance_id: str, *, timeline_limit: int = 200, steps_limit: int = 1000
) -> dict[str, Any]:
    r = await conn.fetchrow(
        f"SELECT {SUMMARY_COLUMNS}, params, run_params, outputs, trigger_key, unblocked, traceparent, "
        "parent_step_id, parent_iteration, requested_at FROM workflow_instance WHERE id = $1",
        instance_id,
    )
    if r is None:
        raise ApiError("not_found", f"unknown run {instance_id!r}", {"instance_id": instance_id})
    out = instance_summary(r)
    out.update(
        params=r["params"],
        run_params=r["run_params"],
        outputs=r["outputs"],
        trigger_key=r["trigger_key"],
        unblocked=r["unblocked"],
        traceparent=r["traceparent"],
        trace_id=r["traceparent"].split("-")[1] if r["traceparent"] else None,
        parent_step_id=r["parent_step_id"],
        parent_iteration=r["parent_iteration"],
        requested_at=iso(r["requested_at"]),
        reason=(await explain_queued(conn, [r])).get(r["id"], r["reason"]),
    )
    steps = await conn.fetch(
        "SELECT step_id, status, attempts, current_attempt_id, retries_error, retries_platform, retries_timeout, "
        "failure_ignored, params, outputs, error, reason, created_at, started_at, ended_at, progress, signals "
        "FROM step_run WHERE instance_id = $1 ORDER BY created_at, step_id LIMIT $2",
        instance_id,
        steps_limit,
    )
    attempts = await conn.fetch(
        "SELECT id, step_id, attempt, status, failure_kind, executor, queue, dispatched_at, started_at, ended_at, "
        "outputs, error, exit_code, log_tail FROM step_attempt WHERE instance_id = $1 ORDER BY step_id, attempt",
        instance_id,
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
                "outputs": a["outputs"],
                "error": a["error"],
                "exit_code": a["exit_code"],
                "log_tail": a["log_tail"],
            }
        )
    live = {
        s["step_id"]: await live_step_reason(conn, s["reason"]) for s in steps if s["status"] == "waiting"
    }
    out["steps"] = [
        {
            "step_id": s["step_id"],
            "status": s["status"],
            "attempts": by_step.get(s["step_id"], []),
            "retries": {
                "error": s["retries_error"],
                "platform": s["retries_platform"],
                "timeout": s["retries_timeout"],
            },
            "failure_ignored": s["failure_ignored"],
            "params": s["params"],
            "outputs": s["outputs"],
            "error": s["error"],
            "reason": live.get(s["step_id"], s["reason"]),
            "created_at": iso(s["created_at"]),
            "started_at": iso(s["started_at"]),
            "ended_at": iso(s["ended_at"]),
            "signals": s["signals"],
            "progress": _progress_view(s["progress"]),
        }
        for s in steps
    ]
    timeline = await conn.fetch(
        "SELECT at, step_id, event, message, actor, details FROM timeline WHERE instance_id = $1 "
        "ORDER BY id DESC LIMIT $2",
        instance_id,
        timeline_limit,
    )
    out["timeline"] = [
        {
            "at": iso(t["at"]),
            "step_id": t["step_id"],
            "event": t["event"],
            "message": t["message"],
            "actor": t["actor"],
            "details": t["details"],
        }
        for t in reversed(timeline)
    ]
    return out


async def live_step_reason(conn: asyncpg.Connection, reason: dict[str, Any] | None) -> dict[str, Any] | None:
    """A step waiting for a tag permit: the tag's current limit, use and holders (not those of when it
    began to wait)."""
    if not reason or reason.get("code") != "waiting_for_permit":
        return reason
    tag = reason.get("tag")
    limit = await conn.fetchval("SELECT max_running FROM concurrency_tag WHERE tag = $1", tag)
    in_use = await conn.fetchval("SELECT count(*) FROM tag_permit WHERE tag = $1", tag)
    holders = [
        f"{r['instance_id']}/{r['step_id']}"
        for r in await conn.fetch(
            "SELECT instance_id, step_id FROM tag_permit WHERE tag = $1 ORDER BY acquired_at LIMIT 5", tag
        )
    ]
    held = ", ".join(holders) + ("…" if in_use > len(holders) else "")
    return {
        **reason,
        "limit": limit,
        "in_use": int(in_use),
        "held_by": holders,
        "message": f"waiting for tag permit {tag} ({in_use}/{limit} held" + (f" by {held})" if held else ")"),
    }


def _progress_view(progress: dict[str, Any] | None) -> dict[str, Any] | None:
    """Counts per status and the first failed items of a foreach/loop/subworkflow step (never 100k ids)."""
    if not progress:
        return None
    view = {k: v for k, v in progress.items() if k not in ("failed_items", "retry", "children", "last")}
    failed = progress.get("failed_items") or []
    view["failed_items"] = sorted(failed)[:100]
    view["failed_items_total"] = len(failed)
    if progress.get("kind") == "foreach":
        view["pending"] = max(0, progress.get("total", 0) - progress.get("next", 0)) + len(
            progress.get("retry") or []
        )
    return view


async def list_iterations(
    conn: asyncpg.Connection,
    instance_id: str,
    step_id: str,
    *,
    status: str | None,
    after: int | None,
    limit: int,
) -> dict[str, Any]:
    rows = await conn.fetch(
        f"SELECT DISTINCT ON (parent_iteration) {SUMMARY_COLUMNS}, parent_iteration, outputs "
        "FROM workflow_instance WHERE parent_instance_id = $1 AND parent_step_id = $2 "
        "AND ($3::int IS NULL OR parent_iteration > $3) ORDER BY parent_iteration, seq DESC",
        instance_id,
        step_id,
        after,
    )
    out = []
    for r in rows:
        if status and r["status"] != status:
            continue
        out.append({**instance_summary(r), "iteration": r["parent_iteration"], "outputs": r["outputs"]})
        if len(out) > limit:
            break
    page = out[:limit]
    return {"iterations": page, "next": page[-1]["iteration"] if len(out) > limit else None}


async def list_instances(
    conn: asyncpg.Connection,
    *,
    workflow_id: str | None,
    status: str | None,
    since: float | None,
    until: float | None,
    limit: int,
    cursor: int | None,
    include_children: bool = False,
) -> dict[str, Any]:
    clauses: list[str] = [] if include_children else ["parent_instance_id IS NULL"]
    args: list[Any] = []

    def add(sql: str, value: Any) -> None:
        args.append(value)
        clauses.append(sql.replace("?", f"${len(args)}"))

    if workflow_id:
        add("workflow_id = ?", workflow_id)
    if status:
        add("status = ?", status)
    if since is not None:
        add("created_at >= ?", datetime.fromtimestamp(since, UTC))
    if until is not None:
        add("created_at < ?", datetime.fromtimestamp(until, UTC))
    if cursor is not None:
        add("seq < ?", cursor)
    where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    args.append(limit + 1)
    rows = await conn.fetch(
        f"SELECT {SUMMARY_COLUMNS} FROM workflow_instance {where} ORDER BY seq DESC LIMIT ${len(args)}", *args
    )
    page = rows[:limit]
    why = await explain_queued(conn, page)
    return {
        "instances": [{**instance_summary(r), "reason": why.get(r["id"], r["reason"])} for r in page],
        "next_cursor": page[-1]["seq"] if len(rows) > limit else None,
    }


def with_all_steps(info: dict[str, Any], order: list[str]) -> dict[str, Any]:
    """Every step of the definition in graph order; steps not decided yet are ``pending``."""
    have = {s["step_id"]: s for s in info["steps"]}
    steps = []
    for sid in order:
        steps.append(
            have.pop(sid, None)
            or {
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
        )
    steps.extend(have.values())
    info["steps"] = steps
    return info
