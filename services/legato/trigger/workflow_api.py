"""``workflow.*``: push and validate definitions, read them, (de)activate, archive or delete a workflow,
its status (counts, running and queued runs with why) and its run strategy.

The operator actions on a whole workflow (``workflow.stop``/``kill``/``unblock``) are in
:mod:`legato.trigger.action_api`; ``workflow.pause``/``resume`` in :mod:`legato.trigger.pause_api`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import msgspec

from legato.bus.topology import Topology
from legato.core.admission import QUEUE_ORDER_SQL, QueueState, queue_state
from legato.core.model import RUN_STRATEGIES
from legato.protocol import api
from legato.protocol.api import ApiError
from legato.protocol.ids import new_request_id
from legato.protocol.replies import (
    StrategySet,
    WorkflowArchived,
    WorkflowDeleted,
    WorkflowDetail,
    WorkflowPage,
    WorkflowPushed,
    WorkflowStatus,
    WorkflowSummary,
    WorkflowValidated,
)
from legato.store.signal_triggers import deactivate_signal_triggers
from legato.telemetry import get_logger
from legato.trigger import instances, registry
from legato.trigger.endpoints import Endpoint, typed
from legato.trigger.instances import iso
from legato.trigger.pause_api import MAX_REASON, pause_info
from legato.trigger.replies import cut_text, fit, reply_budget, size_of, truncated
from legato.trigger.workflow_cache import WorkflowCache

log = get_logger("legato.trigger")

DESCRIPTION_CHARS = 1000  # of a description in workflow.list (workflow.get has it whole)


class WorkflowApi:
    """The ``workflow.*`` endpoints that read and change a workflow's definition and settings."""

    def __init__(
        self,
        nc: Any,
        pool: asyncpg.Pool,
        topology: Topology,
        cache: WorkflowCache,
        *,
        wake_relay: Callable[[], None],
    ) -> None:
        self.nc = nc
        self.pool = pool
        self.topology = topology
        self.cache = cache
        self.wake_relay = wake_relay

    def endpoints(self) -> dict[str, Endpoint]:
        """This resource's endpoints by ``resource.verb``."""
        return {
            "workflow.push": (api.PushWorkflow, self.push),
            "workflow.validate": (api.PushWorkflow, self.validate),
            "workflow.get": (api.WorkflowRef, typed(self.get, WorkflowDetail)),
            "workflow.list": (api.ListWorkflows, typed(self.list, WorkflowPage)),
            "workflow.activate": (api.WorkflowRef, self.activate),
            "workflow.deactivate": (api.WorkflowRef, self.deactivate),
            "workflow.status": (api.WorkflowRef, typed(self.status, WorkflowStatus)),
            "workflow.set_run_strategy": (api.SetRunStrategy, typed(self.set_run_strategy, StrategySet)),
            "workflow.archive": (api.RemoveWorkflow, typed(self.archive, WorkflowArchived)),
            "workflow.delete": (api.RemoveWorkflow, typed(self.delete, WorkflowDeleted)),
        }

    async def validate(self, req: api.PushWorkflow) -> WorkflowValidated:
        defn = registry.parse_or_raise(req.definition, req.source or "<definition>")
        return WorkflowValidated(workflow_id=defn.id, valid=True)

    async def push(self, req: api.PushWorkflow) -> WorkflowPushed:
        defn = registry.parse_or_raise(req.definition, req.source or "<definition>")
        self.cache.forget(defn.id)
        async with self.pool.acquire() as conn, conn.transaction():
            result = await registry.push_workflow(
                conn, self.topology, defn, source_text=req.definition, actor=req.actor, activate=req.activate
            )
        self.wake_relay()
        log.info("workflow_pushed", workflow_id=defn.id, version=result.version, created=result.created)
        return result

    async def get(self, req: api.WorkflowRef) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            row = await registry.get_workflow_row(conn, req.workflow_id)
            version = req.version or row["active_version"]
            text = await registry.load_definition(conn, req.workflow_id, version)
            source = await conn.fetchval(
                "SELECT source FROM workflow_version WHERE workflow_id = $1 AND version = $2",
                req.workflow_id,
                version,
            )
            versions = await conn.fetch(
                "SELECT version, digest, created_at, created_by FROM workflow_version WHERE workflow_id = $1 "
                "ORDER BY version DESC LIMIT 50",
                req.workflow_id,
            )
        out = {
            **registry.workflow_summary(row),
            "version": version,
            "definition": msgspec.json.decode(text),
            "source": source,
            "versions": [
                {
                    "version": v["version"],
                    "digest": v["digest"],
                    "created_at": v["created_at"].isoformat(),
                    "created_by": v["created_by"],
                }
                for v in versions
            ],
        }
        # A definition near the max size: the source text, then the parsed definition, become markers.
        budget = reply_budget(self.nc)
        for key in ("source", "definition"):
            if size_of(out) > budget:
                out[key] = truncated(out[key], budget // 4)
        return out

    async def list(self, req: api.ListWorkflows) -> dict[str, Any]:
        limit = max(1, min(req.limit, 1000))
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT {registry.WORKFLOW_COLUMNS} FROM workflow WHERE ($1::text IS NULL OR id > $1) "
                "AND ($3 OR archived_at IS NULL) ORDER BY id LIMIT $2",
                req.after,
                limit + 1,
                req.include_archived,
            )
            descs = {
                r["workflow_id"]: cut_text(r["d"], r["n"], DESCRIPTION_CHARS)
                for r in await conn.fetch(
                    "SELECT v.workflow_id, left(v.definition->>'description', $2) AS d, "
                    "octet_length(v.definition->>'description') AS n FROM workflow w "
                    "JOIN workflow_version v ON v.workflow_id = w.id AND v.version = w.active_version "
                    "WHERE w.id = ANY($1::text[])",
                    [r["id"] for r in rows[:limit]],
                    DESCRIPTION_CHARS,
                )
            }
        page = fit(
            rows[:limit],
            reply_budget(self.nc),
            lambda r: {**registry.workflow_summary(r), "description": descs.get(r["id"])},
        )
        more = len(page) < len(rows)
        return {"workflows": page, "next": page[-1]["workflow_id"] if more and page else None}

    async def archive(self, req: api.RemoveWorkflow) -> dict[str, Any]:
        """Inactive and hidden from ``workflow list``; its runs and versions are kept (activate or push
        it to bring it back)."""
        if not req.reason.strip():
            raise ApiError("bad_request", "archive: a reason is required (--reason)")
        self.cache.forget(req.workflow_id)
        async with self.pool.acquire() as conn, conn.transaction():
            await registry.get_workflow_row(conn, req.workflow_id, lock=True)
            active = await registry.check_no_active_runs(conn, req.workflow_id, "archive", force=req.force)
            await conn.execute(
                "UPDATE workflow SET active = false, archived_at = coalesce(archived_at, now()), updated_at = now() "
                "WHERE id = $1",
                req.workflow_id,
            )
            await deactivate_signal_triggers(conn, req.workflow_id)
            await registry.notify_scheduler(conn, self.topology, req.workflow_id, "archived")
            result = "archived" + (f" with {active} active run(s) (forced)" if active else "")
            await registry.record_action(
                conn, new_request_id(), req.workflow_id, "archive", req.actor, req.reason, result
            )
            row = await registry.get_workflow_row(conn, req.workflow_id)
        self.wake_relay()
        log.info("workflow_archived", workflow_id=req.workflow_id, actor=req.actor, active_runs=active)
        return {**registry.workflow_summary(row), "result": result}

    async def delete(self, req: api.RemoveWorkflow) -> dict[str, Any]:
        """The workflow, its versions and its runs are gone; the audit record stays."""
        if not req.reason.strip():
            raise ApiError("bad_request", "delete: a reason is required (--reason)")
        async with self.pool.acquire() as conn, conn.transaction():
            await registry.get_workflow_row(conn, req.workflow_id, lock=True)
            active = await registry.check_no_active_runs(conn, req.workflow_id, "delete", force=req.force)
            counts = await registry.delete_workflow(conn, self.topology, req.workflow_id)
            result = f"deleted with {counts['runs']} run(s)" + (
                f", {active} of them active (forced)" if active else ""
            )
            await registry.record_action(
                conn, new_request_id(), req.workflow_id, "delete", req.actor, req.reason, result
            )
        self.cache.forget(req.workflow_id)
        self.wake_relay()
        log.info("workflow_deleted", workflow_id=req.workflow_id, actor=req.actor, **counts)
        return {"workflow_id": req.workflow_id, "deleted": True, "result": result, **counts}

    async def activate(self, req: api.WorkflowRef) -> WorkflowSummary:
        self.cache.forget(req.workflow_id)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await registry.get_workflow_row(conn, req.workflow_id, lock=True)
            version = req.version or row["active_version"]
            compiled = await self.cache.compiled(conn, req.workflow_id, version)
            await registry.activate_version(
                conn, self.topology, req.workflow_id, version, compiled.definition
            )
            row = await registry.get_workflow_row(conn, req.workflow_id)
        self.wake_relay()
        return registry.summary_reply(row)

    async def deactivate(self, req: api.WorkflowRef) -> WorkflowSummary:
        self.cache.forget(req.workflow_id)
        async with self.pool.acquire() as conn, conn.transaction():
            await registry.get_workflow_row(conn, req.workflow_id, lock=True)
            await conn.execute(
                "UPDATE workflow SET active = false, updated_at = now() WHERE id = $1", req.workflow_id
            )
            await deactivate_signal_triggers(conn, req.workflow_id)
            await registry.notify_scheduler(conn, self.topology, req.workflow_id, "deactivated")
            row = await registry.get_workflow_row(conn, req.workflow_id)
        self.wake_relay()
        return registry.summary_reply(row)

    async def status(self, req: api.WorkflowRef) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            row = await registry.get_workflow_row(conn, req.workflow_id)
            counts = {
                r["status"]: r["n"]
                for r in await conn.fetch(
                    "SELECT status, count(*) AS n FROM workflow_instance WHERE workflow_id = $1 GROUP BY status",
                    req.workflow_id,
                )
            }
            running = await conn.fetch(
                f"SELECT {instances.SUMMARY_COLUMNS} FROM workflow_instance WHERE workflow_id = $1 AND status = 'running' "
                "ORDER BY seq LIMIT 100",
                req.workflow_id,
            )
            queued = await conn.fetch(
                f"SELECT {instances.SUMMARY_COLUMNS} FROM workflow_instance WHERE workflow_id = $1 AND status = 'queued' "
                f"ORDER BY {QUEUE_ORDER_SQL} LIMIT 100",
                req.workflow_id,
            )
            why = await instances.explain_queued(conn, list(queued))
            pause = await pause_info(conn, req.workflow_id)
            strategy_change = await strategy_change_info(conn, req.workflow_id)
        summary = registry.workflow_summary(row)
        queue = queue_state(row["run_strategy"], row["max_concurrency"], row["paused"], row["blocked_by"])
        state = str(queue) if queue is not QueueState.QUEUED else "active" if row["active"] else "inactive"
        return {
            **summary,
            "state": state,
            "pause": pause,
            "strategy_change": strategy_change,
            "counts": counts,
            "running_runs": fit(running, reply_budget(self.nc) // 2, instances.instance_summary),
            "queued_runs": fit(
                list(enumerate(queued)),
                reply_budget(self.nc) // 2,
                lambda ir: {
                    **instances.instance_summary(ir[1]),
                    "position": ir[0] + 1,
                    "reason": instances.explained_reason(why, ir[1]),
                },
            ),
        }

    async def set_run_strategy(self, req: api.SetRunStrategy) -> dict[str, Any]:
        """Override the definition's run strategy, recording who did it and why (on the workflow's row,
        as a pause is, and in ``operator_action``)."""
        if req.run_strategy not in RUN_STRATEGIES:
            raise ApiError(
                "bad_request",
                f"run_strategy: must be one of {', '.join(RUN_STRATEGIES)}, got {req.run_strategy!r}",
            )
        if len(req.reason) > MAX_REASON:
            raise ApiError("bad_request", f"reason: at most {MAX_REASON} characters, got {len(req.reason)}")
        limit = req.max_concurrency
        if req.run_strategy == "parallel":
            limit = 20 if limit is None else limit
            if not 0 <= limit <= 1000:
                raise ApiError("bad_request", f"max_concurrency: must be 0..1000, got {limit}")
        else:
            if limit not in (None, 1):
                raise ApiError(
                    "bad_request", f"max_concurrency: only parallel takes a limit other than 1, got {limit}"
                )
            limit = 1
        reason = req.reason.strip()
        action_id = req.request_id or new_request_id()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await registry.get_workflow_row(conn, req.workflow_id, lock=True)
            done = await conn.fetchrow(
                "SELECT workflow_id, action FROM operator_action WHERE id = $1", action_id
            )
            if done is not None:
                if (done["workflow_id"], done["action"]) != (req.workflow_id, "set_run_strategy"):
                    raise ApiError(
                        "bad_request",
                        f"request_id: {action_id!r} is already the id of another action "
                        f"({done['action']} of {done['workflow_id']})",
                    )
                # a retry of a change already made: the same answer, recorded once
                change = await strategy_change_info(conn, req.workflow_id)
                return {**registry.workflow_summary(row), "strategy_change": change}
            before = f"{row['run_strategy']} (max_concurrency {row['max_concurrency']})"
            await registry.check_strategy_change(conn, req.workflow_id, req.run_strategy)
            await conn.execute(
                "UPDATE workflow SET run_strategy = $2, max_concurrency = $3, strategy_source = 'api', "
                "strategy_set_by = $4, strategy_reason = $5, strategy_set_at = now(), updated_at = now() "
                "WHERE id = $1",
                req.workflow_id,
                req.run_strategy,
                limit,
                req.actor,
                reason or None,
            )
            result = f"run_strategy {req.run_strategy} (max_concurrency {limit}), was {before}"
            await registry.record_action(
                conn, action_id, req.workflow_id, "set_run_strategy", req.actor, reason, result
            )
            await registry.notify_scheduler(
                conn, self.topology, req.workflow_id, f"run_strategy {req.run_strategy}"
            )
            change = await strategy_change_info(conn, req.workflow_id)
            row = await registry.get_workflow_row(conn, req.workflow_id)
        self.wake_relay()
        log.info(
            "workflow_strategy_set",
            workflow_id=req.workflow_id,
            actor=req.actor,
            reason=reason,
            run_strategy=req.run_strategy,
            max_concurrency=limit,
        )
        return {**registry.workflow_summary(row), "strategy_change": change}


async def strategy_change_info(conn: asyncpg.Connection, workflow_id: str) -> dict[str, Any] | None:
    """Who set the workflow's run strategy through the API, why and when; None when the definition's
    strategy applies."""
    row = await conn.fetchrow(
        "SELECT strategy_source, strategy_set_by, strategy_reason, strategy_set_at FROM workflow WHERE id = $1",
        workflow_id,
    )
    if row is None or row["strategy_source"] != "api" or row["strategy_set_at"] is None:
        return None
    return {"by": row["strategy_set_by"], "reason": row["strategy_reason"], "at": iso(row["strategy_set_at"])}
