"""``workflow.pause`` / ``workflow.resume``: hold a workflow's schedule and its queue, with who and why.

Pausing sets ``workflow.paused`` (which the scheduler already honours: queued runs wait, with reason
``paused``) plus who paused, why and since when. The cron loop sees the flag: under ``catch_up: none``
each fire that falls due is recorded as a skipped run with the pause reason; under ``latest``/``all``
the fires wait and the policy applies on resume. Both calls are idempotent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg

from legato.bus.topology import Topology
from legato.protocol import api
from legato.protocol.api import ApiError
from legato.protocol.replies import WorkflowPaused
from legato.telemetry import get_logger
from legato.trigger import registry
from legato.trigger.endpoints import Endpoint, typed
from legato.trigger.instances import iso

log = get_logger("legato.trigger")

MAX_REASON = 1000


async def pause_info(conn: asyncpg.Connection, workflow_id: str) -> dict[str, Any] | None:
    """Who paused the workflow, why and since when; None when it is not paused."""
    row = await conn.fetchrow(
        "SELECT paused, paused_by, paused_reason, paused_at FROM workflow WHERE id = $1", workflow_id
    )
    if row is None or not row["paused"]:
        return None
    return {"by": row["paused_by"], "reason": row["paused_reason"], "since": iso(row["paused_at"])}


class PauseApi:
    def __init__(self, pool: asyncpg.Pool, topology: Topology, *, wake_relay: Callable[[], None]) -> None:
        self.pool = pool
        self.topology = topology
        self.wake_relay = wake_relay

    def endpoints(self) -> dict[str, Endpoint]:
        return {
            "workflow.pause": (api.WorkflowAction, typed(self.pause, WorkflowPaused)),
            "workflow.resume": (api.WorkflowAction, typed(self.resume, WorkflowPaused)),
        }

    async def pause(self, req: api.WorkflowAction) -> dict[str, Any]:
        if len(req.reason) > MAX_REASON:
            raise ApiError("bad_request", f"reason: at most {MAX_REASON} characters, got {len(req.reason)}")
        return await self._set(req, paused=True)

    async def resume(self, req: api.WorkflowAction) -> dict[str, Any]:
        return await self._set(req, paused=False)

    async def _set(self, req: api.WorkflowAction, *, paused: bool) -> dict[str, Any]:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await registry.get_workflow_row(conn, req.workflow_id, lock=True)
            changed = row["paused"] != paused
            if changed:
                if paused:
                    await conn.execute(
                        "UPDATE workflow SET paused = true, paused_by = $2, paused_reason = $3, paused_at = now(), "
                        "updated_at = now() WHERE id = $1",
                        req.workflow_id,
                        req.actor,
                        req.reason or None,
                    )
                else:
                    await conn.execute(
                        "UPDATE workflow SET paused = false, paused_by = NULL, paused_reason = NULL, "
                        "paused_at = NULL, updated_at = now() WHERE id = $1",
                        req.workflow_id,
                    )
                await registry.notify_scheduler(
                    conn, self.topology, req.workflow_id, "paused" if paused else "resumed"
                )
            info = await pause_info(conn, req.workflow_id)
            row = await registry.get_workflow_row(conn, req.workflow_id)
        if changed:
            self.wake_relay()
            log.info(
                "workflow_paused" if paused else "workflow_resumed",
                workflow_id=req.workflow_id,
                actor=req.actor,
                reason=req.reason,
            )
        return {**registry.workflow_summary(row), "changed": changed, "pause": info}
