"""Operator actions: ``instance.stop``/``kill``/``restart``/``unblock``/``skip_step`` and
``workflow.stop``/``kill``/``unblock`` (on every run of a workflow), driven by two tables.

The API checks what it can answer at once (the run exists, its status allows the action, the step is
one of the run's, the workflow is blocked by this run) and queues an ``ActionRequest`` for the
scheduler through the outbox; the scheduler applies it and records the result on the run. Adding an
action is a row in ``INSTANCE_ACTIONS`` or ``WORKFLOW_ACTIONS`` plus its handling in the scheduler.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import asyncpg

from legato.bus.publisher import OutgoingMessage
from legato.bus.topology import Topology
from legato.core.admission import action_statuses, step_only_statuses
from legato.core.statuses import InstanceStatus
from legato.protocol import api, encode
from legato.protocol.api import ApiError
from legato.protocol.ids import new_request_id
from legato.protocol.messages import ActionKind, ActionRequest
from legato.protocol.replies import ActionAccepted
from legato.store.outbox import add_to_outbox
from legato.telemetry.tracing import inject_headers
from legato.trigger import registry
from legato.trigger.endpoints import Endpoint
from legato.trigger.workflow_cache import WorkflowCache


@dataclass(frozen=True)
class InstanceActionRule:
    """What ``instance.<verb>`` checks before it asks the scheduler for ``action``."""

    action: ActionKind
    allowed: tuple[InstanceStatus, ...] | None
    """The run statuses the action applies to; None: any (``must_block`` decides)."""
    allowed_with_step: tuple[InstanceStatus, ...] = ()
    """Further statuses it applies to when the request names a step."""
    step: Literal["ignored", "optional", "required"] = "ignored"
    """Whether the request's ``step_id`` is passed on (and checked to be one of the run's steps)."""
    must_block: bool = False
    """Only for the run that blocks its strict_sequential workflow."""
    verb: str = ""
    """How the refusal names the action (``cannot <verb> run …``); the action's name when empty."""


def _applies_to(action: str) -> tuple[InstanceStatus, ...]:
    """The statuses of ``legato.core.admission`` (the scheduler's rule too), typed."""
    return tuple(InstanceStatus(s) for s in action_statuses(action))


INSTANCE_ACTIONS: dict[str, InstanceActionRule] = {
    "stop": InstanceActionRule("stop", _applies_to("stop")),
    "kill": InstanceActionRule("kill", _applies_to("kill")),
    "restart": InstanceActionRule(
        "restart",
        _applies_to("restart"),
        allowed_with_step=tuple(InstanceStatus(s) for s in step_only_statuses("restart")),
        step="optional",
    ),
    "unblock": InstanceActionRule("unblock", None, must_block=True),
    "skip_step": InstanceActionRule(
        "skip_step", _applies_to("skip_step"), step="required", verb="skip a step of"
    ),
}
"""``instance.<verb>`` -> its rule."""


@dataclass(frozen=True)
class WorkflowActionRule:
    """What ``workflow.<verb>`` asks the scheduler for, on every run of the workflow."""

    action: ActionKind
    must_be_blocked: bool = False


WORKFLOW_ACTIONS: dict[str, WorkflowActionRule] = {
    "stop": WorkflowActionRule("stop_all"),
    "kill": WorkflowActionRule("kill_all"),
    "unblock": WorkflowActionRule("unblock_all", must_be_blocked=True),
}
"""``workflow.<verb>`` -> its rule."""


def statuses_allowed(rule: InstanceActionRule, *, with_step: bool) -> tuple[InstanceStatus, ...] | None:
    """The run statuses ``rule`` applies to (None: any), for a request that names a step or not."""
    if rule.allowed is None:
        return None
    return rule.allowed + (rule.allowed_with_step if with_step else ())


class ActionApi:
    """The operator actions on runs and workflows, one handler per table."""

    def __init__(
        self, pool: asyncpg.Pool, topology: Topology, cache: WorkflowCache, *, wake_relay: Callable[[], None]
    ) -> None:
        self.pool = pool
        self.topology = topology
        self.cache = cache
        self.wake_relay = wake_relay

    def endpoints(self) -> dict[str, Endpoint]:
        """This resource's endpoints by ``resource.verb``."""
        out: dict[str, Endpoint] = {}
        for verb in INSTANCE_ACTIONS:
            out[f"instance.{verb}"] = (api.InstanceAction, functools.partial(self.on_instance, verb))
        for verb in WORKFLOW_ACTIONS:
            out[f"workflow.{verb}"] = (api.WorkflowAction, functools.partial(self.on_workflow, verb))
        return out

    async def on_instance(self, verb: str, req: api.InstanceAction) -> ActionAccepted:
        """Check ``instance.<verb>`` against its rule, then queue the action."""
        rule = INSTANCE_ACTIONS[verb]
        if rule.step == "required" and not req.step_id:
            raise ApiError("bad_request", f"{verb}: step_id is required")
        step_id = req.step_id if rule.step != "ignored" else None
        async with self.pool.acquire() as conn:
            run = await conn.fetchrow(
                "SELECT id, workflow_id, version, status FROM workflow_instance WHERE id = $1",
                req.instance_id,
            )
            if run is None:
                raise ApiError(
                    "not_found", f"unknown run {req.instance_id!r}", {"instance_id": req.instance_id}
                )
            allowed = statuses_allowed(rule, with_step=bool(step_id))
            if allowed is not None and run["status"] not in allowed:
                raise ApiError(
                    "not_applicable",
                    f"cannot {rule.verb or verb} run {run['id']}: it is {run['status']} "
                    f"(allowed when {', '.join(allowed)})",
                    {"status": run["status"]},
                )
            if rule.must_block:
                await _check_blocks(conn, run)
            if step_id:
                await self._check_step(conn, run, step_id)
        return await self._send(
            run["workflow_id"],
            rule.action,
            instance_id=run["id"],
            step_id=step_id,
            reason=req.reason,
            actor=req.actor,
            request_id=req.request_id,
        )

    async def on_workflow(self, verb: str, req: api.WorkflowAction) -> ActionAccepted:
        """Check ``workflow.<verb>`` against its rule, then queue the action."""
        rule = WORKFLOW_ACTIONS[verb]
        async with self.pool.acquire() as conn:
            wf = await registry.get_workflow_row(conn, req.workflow_id)
        if rule.must_be_blocked and not wf["blocked_by"]:
            raise ApiError("not_applicable", f"workflow {req.workflow_id} is not blocked")
        return await self._send(
            req.workflow_id,
            rule.action,
            instance_id=None,
            step_id=None,
            reason=req.reason,
            actor=req.actor,
            request_id=req.request_id,
        )

    async def _check_step(self, conn: asyncpg.Connection, run: asyncpg.Record, step_id: str) -> None:
        """An action naming a step the run does not have is an error, not an accepted no-op."""
        order = (await self.cache.compiled(conn, run["workflow_id"], run["version"])).topo_order
        if step_id in order or await conn.fetchval(
            "SELECT 1 FROM step_run WHERE instance_id = $1 AND step_id = $2", run["id"], step_id
        ):
            return
        shown = ", ".join(order[:20]) + ("…" if len(order) > 20 else "")
        raise ApiError(
            "not_found",
            f"run {run['id']} has no step {step_id!r} (its steps: {shown})",
            {"instance_id": run["id"], "step_id": step_id},
        )

    async def _send(
        self,
        workflow_id: str,
        action: ActionKind,
        *,
        instance_id: str | None,
        step_id: str | None,
        reason: str,
        actor: str | None,
        request_id: str | None,
    ) -> ActionAccepted:
        """Queue the action for the scheduler (through the outbox) and say it was accepted."""
        if not reason.strip():
            raise ApiError("bad_request", f"{action}: a reason is required (--reason)")
        action_id = request_id or new_request_id()
        msg = action_message(
            self.topology,
            workflow_id,
            action,
            action_id=action_id,
            instance_id=instance_id,
            step_id=step_id,
            reason=reason,
            actor=actor or "api",
            headers=inject_headers({}),
        )
        async with self.pool.acquire() as conn, conn.transaction():
            await add_to_outbox(conn, [msg])
        self.wake_relay()
        return ActionAccepted(
            action_id=action_id,
            action=action,
            workflow_id=workflow_id,
            instance_id=instance_id,
        )


def action_message(
    topology: Topology,
    workflow_id: str,
    action: ActionKind,
    *,
    action_id: str,
    instance_id: str | None,
    step_id: str | None = None,
    reason: str,
    actor: str,
    headers: dict[str, str] | None = None,
) -> OutgoingMessage:
    """The ``ActionRequest`` for the workflow's actor, deduplicated by its action id (for the outbox)."""
    msg = ActionRequest(
        action_id=action_id,
        workflow_id=workflow_id,
        action=action,
        instance_id=instance_id,
        step_id=step_id,
        reason=reason,
        actor=actor,
        requested_at=time.time(),
    )
    return OutgoingMessage(
        topology.trigger_subject(workflow_id),
        encode(msg),
        msg_id=f"action:{action_id}",
        headers=headers or {},
    )


async def _check_blocks(conn: asyncpg.Connection, run: asyncpg.Record) -> None:
    """Unblocking a run that does not block its workflow is refused, naming what does."""
    wf = await registry.get_workflow_row(conn, run["workflow_id"])
    if wf["blocked_by"] != run["id"]:
        raise ApiError(
            "not_applicable",
            f"run {run['id']} does not block workflow {run['workflow_id']}"
            + (f" (blocked by {wf['blocked_by']})" if wf["blocked_by"] else " (the workflow is not blocked)"),
        )
