"""``instance.get``/``list``/``iterations``: read runs, their steps and timeline, and a dynamic step's
child runs. Every reply fits one NATS message (:mod:`legato.trigger.replies`); the SQL is in
:mod:`legato.trigger.instances`. Starting a run is :mod:`legato.trigger.start_api`; acting on one,
:mod:`legato.trigger.action_api`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg
import msgspec

from legato.core.statuses import InstanceStatus
from legato.protocol import api
from legato.protocol.api import ApiError
from legato.protocol.replies import InstanceDetail, InstancePage, IterationPage
from legato.trigger import instances
from legato.trigger.endpoints import Endpoint, typed
from legato.trigger.replies import reply_budget
from legato.trigger.workflow_cache import WorkflowCache


class RunApi:
    """The ``instance.*`` endpoints that read runs."""

    def __init__(
        self, nc: Any, pool: asyncpg.Pool, cache: WorkflowCache, *, accepted: Mapping[str, str]
    ) -> None:
        self.nc = nc
        self.pool = pool
        self.cache = cache
        self.accepted = accepted  # instance id -> workflow id of starts accepted by this process

    def endpoints(self) -> dict[str, Endpoint]:
        """This resource's endpoints by ``resource.verb``."""
        return {
            "instance.get": (api.InstanceRef, typed(self.get, InstanceDetail)),
            "instance.list": (api.ListInstances, typed(self.list, InstancePage)),
            "instance.iterations": (api.ListIterations, typed(self.iterations, IterationPage)),
        }

    async def get(self, req: api.InstanceRef) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            run = await conn.fetchrow(
                "SELECT workflow_id, version FROM workflow_instance WHERE id = $1", req.instance_id
            )
            if run is None:
                # Accepted but not yet applied by the scheduler: say so instead of "unknown".
                workflow_id = self.accepted.get(req.instance_id) or await conn.fetchval(
                    "SELECT workflow_id FROM accepted_start WHERE instance_id = $1", req.instance_id
                )
                if workflow_id and not await conn.fetchval(
                    "SELECT 1 FROM workflow WHERE id = $1", workflow_id
                ):
                    workflow_id = None  # accepted, then its workflow was deleted
                if workflow_id:
                    return {
                        "instance_id": req.instance_id,
                        "workflow_id": workflow_id,
                        "status": InstanceStatus.PENDING,
                        "steps": [],
                        "timeline": [],
                    }
                raise ApiError(
                    "not_found", f"unknown run {req.instance_id!r}", {"instance_id": req.instance_id}
                )
            try:
                order = (await self.cache.compiled(conn, run["workflow_id"], run["version"])).topo_order
            except ApiError:
                order = []  # a run failed because its version does not exist: no graph to show
            return await instances.get_instance(
                conn,
                req.instance_id,
                timeline_limit=req.timeline_limit,
                steps_limit=req.steps_limit,
                steps_offset=req.steps_offset,
                order=order,
                budget=reply_budget(self.nc),
            )

    async def list(self, req: api.ListInstances) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            return await instances.list_instances(
                conn,
                msgspec.structs.replace(req, limit=max(1, min(req.limit, 1000))),
                budget=reply_budget(self.nc),
            )

    async def iterations(self, req: api.ListIterations) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            return await instances.list_iterations(
                conn,
                req.instance_id,
                req.step_id,
                status=req.status,
                after=req.after,
                limit=max(1, min(req.limit, 1000)),
                budget=reply_budget(self.nc),
            )
