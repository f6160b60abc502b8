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
from legato.protocol import encode
from legato.protocol.api import ApiError
from legato.protocol.messages import WorkflowChanged
from legato.store.outbox import add_to_outbox
from legato.store.signal_triggers import register_signal_triggers

WORKFLOW_COLUMNS = (
    "id, active, active_version, latest_version, run_strategy, max_concurrency, strategy_source, paused, "
    "blocked_by, blocked_since, running_count, queued_count, created_at, updated_at"
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
) -> dict[str, Any]:
    """Store a new version when the definition changed (else return the latest), and maybe activate it."""
    digest = definition_digest(defn)
    body = definition_to_json(defn).decode()
    row = await conn.fetchrow(f"SELECT {WORKFLOW_COLUMNS} FROM workflow WHERE id = $1 FOR UPDATE", defn.id)
    created = False
    if row is None:
        version = 1
        created = True
        await conn.execute(
            "INSERT INTO workflow (id, active, active_version, latest_version, run_strategy, max_concurrency) "
            "VALUES ($1, true, 1, 1, $2, $3)",
            defn.id,
            defn.run_strategy.type,
            defn.run_strategy.max_concurrency,
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
    return {
        "workflow_id": defn.id,
        "version": version,
        "created": created,
        "active_version": final["active_version"],
        "active": final["active"],
        "digest": digest,
    }


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
        "strategy_source = 'definition', updated_at = now() WHERE id = $1",
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
    }
