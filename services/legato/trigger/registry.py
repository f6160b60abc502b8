"""The workflow registry: immutable versions, activation, and the effective run strategy."""

from __future__ import annotations

from typing import Any

import asyncpg

from legato.bus.publisher import OutgoingMessage
from legato.bus.topology import Topology
from legato.core import (
    DefinitionError,
    SignalTrigger,
    WorkflowDefinition,
    definition_digest,
    definition_to_json,
    parse_definition,
)
from legato.core.statuses import ACTIVE_INSTANCE
from legato.protocol import encode
from legato.protocol.api import ApiError
from legato.protocol.messages import CancelAttempt, WorkflowChanged
from legato.protocol.replies import WorkflowPushed, WorkflowSummary
from legato.store.outbox import add_to_outbox
from legato.store.signal_triggers import deactivate_signal_triggers, register_signal_triggers

WORKFLOW_COLUMNS = (
    "id, active, active_version, latest_version, run_strategy, max_concurrency, strategy_source, paused, "
    "blocked_by, blocked_since, running_count, queued_count, created_at, updated_at, archived_at"
)


def parse_or_raise(text: str, source: str) -> WorkflowDefinition:
    try:
        return parse_definition(text, source=source)
    except DefinitionError as exc:
        raise ApiError(
            "invalid_definition",
            f"{source}: {len(exc.errors)} problem(s) in the definition",
            {"errors": [{"path": e.path, "message": e.message} for e in exc.errors]},
        ) from None


async def push_workflow(
    conn: asyncpg.Connection,
    topology: Topology,
    defn: WorkflowDefinition,
    *,
    source_text: str,
    actor: str | None,
    activate: bool,
) -> WorkflowPushed:
    """Store a new version when the definition changed (else return the latest), and maybe activate it."""
    digest = definition_digest(defn)
    body = definition_to_json(defn).decode()
    row = await conn.fetchrow(f"SELECT {WORKFLOW_COLUMNS} FROM workflow WHERE id = $1 FOR UPDATE", defn.id)
    created = False
    if row is None:
        # A deleted workflow's id continues its numbering: a version number never names two definitions.
        last = await conn.fetchval("SELECT last_version FROM deleted_workflow WHERE id = $1", defn.id)
        version = int(last or 0) + 1
        created = True
        await conn.execute(
            "INSERT INTO workflow (id, active, active_version, latest_version, run_strategy, max_concurrency) "
            "VALUES ($1, true, $4, $4, $2, $3)",
            defn.id,
            defn.run_strategy.type,
            defn.run_strategy.max_concurrency,
            version,
        )
    else:
        latest = await conn.fetchrow(
            "SELECT version, digest FROM workflow_version WHERE workflow_id = $1 AND version = $2",
            defn.id,
            row["latest_version"],
        )
        if latest is not None and latest["digest"] == digest:
            version = int(latest["version"])
        else:
            version = int(row["latest_version"]) + 1
            created = True
            await conn.execute("UPDATE workflow SET latest_version = $2 WHERE id = $1", defn.id, version)
    if created:
        await conn.execute(
            "INSERT INTO workflow_version (workflow_id, version, digest, definition, source, created_by) "
            "VALUES ($1, $2, $3, $4::text::jsonb, $5, $6)",
            defn.id,
            version,
            digest,
            body,
            source_text,
            actor,
        )
    if activate and (created or row is None or row["active_version"] != version or not row["active"]):
        await activate_version(conn, topology, defn.id, version, defn)
    final = await conn.fetchrow(f"SELECT {WORKFLOW_COLUMNS} FROM workflow WHERE id = $1", defn.id)
    return WorkflowPushed(
        workflow_id=defn.id,
        version=version,
        created=created,
        active_version=final["active_version"],
        active=final["active"],
        digest=digest,
    )


async def activate_version(
    conn: asyncpg.Connection,
    topology: Topology,
    workflow_id: str,
    version: int,
    defn: WorkflowDefinition,
) -> None:
    # Activating a version applies its run strategy (an API override lasts until the next activation).
    current = await conn.fetchval("SELECT run_strategy FROM workflow WHERE id = $1", workflow_id)
    if current != defn.run_strategy.type:
        await check_strategy_change(conn, workflow_id, defn.run_strategy.type)
    await conn.execute(
        "UPDATE workflow SET active = true, active_version = $2, run_strategy = $3, max_concurrency = $4, "
        "strategy_source = 'definition', strategy_set_by = NULL, strategy_reason = NULL, strategy_set_at = NULL, "
        "archived_at = NULL, updated_at = now() WHERE id = $1",
        workflow_id,
        version,
        defn.run_strategy.type,
        defn.run_strategy.max_concurrency,
    )
    signal_triggers = [(t.id, t.since) for t in defn.triggers if isinstance(t, SignalTrigger)]
    await register_signal_triggers(conn, workflow_id, version, signal_triggers)
    await notify_scheduler(conn, topology, workflow_id, f"activated version {version}")


async def check_strategy_change(conn: asyncpg.Connection, workflow_id: str, strategy: str) -> None:
    """Refuse a run strategy that cannot apply cleanly to the runs there are, saying what to do first."""
    if strategy not in ("first_only", "last_only"):
        return
    active = await conn.fetchval(
        "SELECT count(*) FROM workflow_instance WHERE workflow_id = $1 AND status IN ('queued', 'running') "
        "AND parent_instance_id IS NULL",
        workflow_id,
    )
    if active > 1:
        raise ApiError(
            "conflict",
            f"cannot switch {workflow_id} to {strategy} while {active} runs are queued or running: stop the "
            f"extra runs first (legato stop RUN, or legato workflow stop {workflow_id}), then retry",
            {"active_runs": int(active)},
        )


async def notify_scheduler(
    conn: asyncpg.Connection, topology: Topology, workflow_id: str, change: str
) -> None:
    await add_to_outbox(
        conn,
        [
            OutgoingMessage(
                topology.trigger_subject(workflow_id),
                encode(WorkflowChanged(workflow_id=workflow_id, change=change)),
            )
        ],
    )


async def load_definition(conn: asyncpg.Connection, workflow_id: str, version: int) -> str:
    text = await conn.fetchval(
        "SELECT definition::text FROM workflow_version WHERE workflow_id = $1 AND version = $2",
        workflow_id,
        version,
    )
    if text is None:
        raise ApiError(
            "not_found",
            f"workflow {workflow_id!r} has no version {version}",
            {"workflow_id": workflow_id, "version": version},
        )
    return str(text)


async def get_workflow_row(
    conn: asyncpg.Connection, workflow_id: str, *, lock: bool = False
) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"SELECT {WORKFLOW_COLUMNS} FROM workflow WHERE id = $1" + (" FOR UPDATE" if lock else ""),
        workflow_id,
    )
    if row is None:
        raise ApiError("not_found", f"unknown workflow {workflow_id!r}", {"workflow_id": workflow_id})
    return row


def workflow_summary(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "workflow_id": row["id"],
        "active": row["active"],
        "active_version": row["active_version"],
        "latest_version": row["latest_version"],
        "run_strategy": row["run_strategy"],
        "max_concurrency": row["max_concurrency"],
        "strategy_source": row["strategy_source"],
        "paused": row["paused"],
        "blocked_by": row["blocked_by"],
        "blocked_since": row["blocked_since"].isoformat() if row["blocked_since"] else None,
        "running": row["running_count"],
        "queued": row["queued_count"],
        "updated_at": row["updated_at"].isoformat(),
        "archived_at": row["archived_at"].isoformat() if row["archived_at"] else None,
    }


def summary_reply(row: asyncpg.Record) -> WorkflowSummary:
    """``workflow_summary`` as the typed reply of the calls that return only that."""
    return WorkflowSummary(**workflow_summary(row))


async def check_no_active_runs(
    conn: asyncpg.Connection, workflow_id: str, action: str, *, force: bool
) -> int:
    """Refuse to archive/delete a workflow with queued or running runs unless forced; never delete runs
    another workflow's run waits for (a subworkflow child: its parent would wait forever)."""
    active = int(
        await conn.fetchval(
            "SELECT count(*) FROM workflow_instance WHERE workflow_id = $1 AND status = ANY($2::text[])",
            workflow_id,
            list(ACTIVE_INSTANCE),
        )
    )
    if active and not force:
        raise ApiError(
            "conflict",
            f"cannot {action} {workflow_id}: {active} run(s) are queued or running; stop them first "
            f"(legato workflow stop {workflow_id}) or pass --force",
            {"workflow_id": workflow_id, "active_runs": active},
        )
    if action == "delete":
        parent = await conn.fetchrow(
            "SELECT c.id, p.id AS parent, p.workflow_id FROM workflow_instance c JOIN workflow_instance p "
            "ON p.id = c.parent_instance_id WHERE c.workflow_id = $1 AND p.workflow_id <> $1 "
            "AND c.status = ANY($2::text[]) LIMIT 1",
            workflow_id,
            list(ACTIVE_INSTANCE),
        )
        if parent is not None:
            raise ApiError(
                "conflict",
                f"cannot delete {workflow_id}: its run {parent['id']} is a child of run {parent['parent']} of "
                f"workflow {parent['workflow_id']}, which waits for it; stop that run first",
                {
                    "workflow_id": workflow_id,
                    "instance_id": parent["id"],
                    "parent_instance_id": parent["parent"],
                },
            )
    return active


async def record_action(
    conn: asyncpg.Connection,
    action_id: str,
    workflow_id: str,
    action: str,
    actor: str | None,
    reason: str,
    result: str,
) -> None:
    """The audit trail of operator actions (``operator_action``, beside the scheduler's)."""
    await conn.execute(
        "INSERT INTO operator_action (id, workflow_id, action, actor, reason, result) VALUES ($1, $2, $3, $4, $5, $6)",
        action_id,
        workflow_id,
        action,
        actor,
        reason,
        result,
    )


# Rows that belong to a workflow's runs, deleted with it (by run id, then by workflow id).
_RUN_TABLES = ("timeline", "step_attempt", "step_run", "signal_wait", "timer", "accepted_start")
_WORKFLOW_TABLES = (
    "tag_permit",
    "tag_waiter",
    "cron_cursor",
    "cron_fire",
    "signal_trigger_fire",
    "signal_join",
    "signal_trigger",
)


async def delete_workflow(conn: asyncpg.Connection, topology: Topology, workflow_id: str) -> dict[str, int]:
    """Delete a workflow, its versions and its runs (the caller holds the workflow row lock); attempts
    still running are cancelled; a tombstone keeps the version numbering."""
    row = await get_workflow_row(conn, workflow_id)
    ids = [
        r["id"]
        for r in await conn.fetch("SELECT id FROM workflow_instance WHERE workflow_id = $1", workflow_id)
    ]
    live = await conn.fetch(
        "SELECT id FROM step_attempt WHERE instance_id = ANY($1::text[]) AND ended_at IS NULL", ids
    )
    await add_to_outbox(
        conn,
        [
            OutgoingMessage(
                topology.cancel_subject(a["id"]),
                encode(
                    CancelAttempt(attempt_id=a["id"], reason=f"workflow {workflow_id} deleted", force=True)
                ),
                core=True,
            )
            for a in live
        ],
    )
    # Tag permits its runs held are freed: wake the other workflows waiting for those tags.
    waiting = await conn.fetch(
        "SELECT DISTINCT w.workflow_id FROM tag_waiter w JOIN tag_permit p ON p.tag = w.tag "
        "WHERE p.workflow_id = $1 AND w.workflow_id <> $1 ORDER BY 1",
        workflow_id,
    )
    for w in waiting:
        await notify_scheduler(conn, topology, w["workflow_id"], f"permits freed: {workflow_id} deleted")
    await deactivate_signal_triggers(conn, workflow_id)
    for table in _RUN_TABLES:
        await conn.execute(f"DELETE FROM {table} WHERE instance_id = ANY($1::text[])", ids)
    await conn.execute("DELETE FROM workflow_instance WHERE workflow_id = $1", workflow_id)
    for table in _WORKFLOW_TABLES:
        await conn.execute(f"DELETE FROM {table} WHERE workflow_id = $1", workflow_id)
    await conn.execute(
        "INSERT INTO deleted_workflow (id, last_version) VALUES ($1, $2) "
        "ON CONFLICT (id) DO UPDATE SET last_version = $2, deleted_at = now()",
        workflow_id,
        row["latest_version"],
    )
    await conn.execute("DELETE FROM workflow WHERE id = $1", workflow_id)  # versions cascade
    # The scheduler's actor drops what it holds for the workflow when it finds the row gone.
    await notify_scheduler(conn, topology, workflow_id, "deleted")
    return {"runs": len(ids), "cancelled_attempts": len(live)}
