"""The request/reply API: a ``nats.micro`` service named ``legato`` on ``legato.api.<resource>.<verb>``.

Requests are decoded into typed Structs; every outcome is a JSON reply — ``{"result": …}`` or
``{"error": {"code", "message", "details"}}`` — so a client never waits out a timeout for a bad request.
Requests are served concurrently (bounded); ``instance.start`` goes through a group-commit batcher.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service
from opentelemetry import trace

from legato.bus.publisher import OutgoingMessage, Publisher
from legato.bus.topology import Topology
from legato.core import CompiledWorkflow, compile_workflow, definition_from_json
from legato.core.admission import QueueState, action_statuses, queue_state
from legato.lifecycle.component import Component
from legato.protocol import api as A
from legato.protocol import encode
from legato.protocol.api import ApiError
from legato.protocol.ids import instance_id_for, new_request_id
from legato.protocol.messages import ActionRequest, StartRun, TriggerInfo
from legato.store.batcher import GroupCommit, fail_whole_batch_unless_content_error
from legato.store.outbox import add_to_outbox
from legato.store.signal_triggers import deactivate_signal_triggers
from legato.telemetry import bind_context, get_logger, metrics
from legato.telemetry.tracing import consume_span, inject_headers
from legato.trigger import instances as Q
from legato.trigger import registry as R
from legato.trigger.authz import Authz
from legato.trigger.backfill import BackfillApi
from legato.trigger.dead_letter_api import DeadLetterApi
from legato.trigger.pause_api import PauseApi, pause_info
from legato.trigger.replies import cut_text, fit, max_payload, reply_budget, size_of, truncated
from legato.trigger.run_params import check_run_params
from legato.trigger.signal_api import SignalApi

log = get_logger("legato.trigger")

_encoder = msgspec.json.Encoder()
TAG_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
ROW_CACHE_SECONDS = 1.0
ACCEPTED_PRUNE_SECONDS = 60.0
DESCRIPTION_CHARS = 1000  # of a description in workflow.list (workflow.get has it whole)
STRATEGIES = ("sequential", "strict_sequential", "first_only", "last_only", "serial_latest_only", "parallel")


@dataclass
class _PendingStart:
    req: A.StartInstance
    compiled: CompiledWorkflow
    instance_id: str
    trigger_key: str
    params: dict[str, Any]
    headers: dict[str, str]
    request_id: str
    digest: str


class ApiService(Component):
    name = "api"

    def __init__(
        self,
        nc: Any,
        pool: asyncpg.Pool,
        topology: Topology,
        *,
        wake_relay: Callable[[], None],
        max_concurrent: int = 256,
        start_batch: int = 256,
        authz: Authz | None = None,
        publisher: Publisher | None = None,
    ) -> None:
        super().__init__()
        self.nc = nc
        # The host's publisher: it signs the signals ``signal.send`` publishes for its caller.
        self.publisher = publisher or Publisher(nc)
        self.pool = pool
        self.topology = topology
        self.wake_relay = wake_relay
        self._slots = asyncio.Semaphore(max_concurrent)
        self._tasks: set[asyncio.Task[None]] = set()
        # Group commit: starts that arrive together share one transaction.
        self._starts: GroupCommit[_PendingStart, dict[str, Any]] = GroupCommit(
            self._apply_starts,
            name="api-starts",
            batch=start_batch,
            queue_size=4096,
            batch_error=fail_whole_batch_unless_content_error,
        )
        self._compiled: dict[tuple[str, int], CompiledWorkflow] = {}
        self._rows: dict[str, tuple[float, bool, int]] = {}
        # Starts this process accepted recently: "pending" until the scheduler has created the run.
        self._accepted: OrderedDict[str, str] = OrderedDict()
        self._pruned_at = 0.0
        self.service: Service | None = None
        self.requests = 0
        self.authz = authz or Authz(None)

    # ------------------------------------------------------------------ lifecycle

    async def _run(self) -> None:
        self.service = await add_service(
            self.nc, name="legato", version="0.1.0", description="Legato workflow orchestrator API"
        )
        endpoints: dict[str, tuple[type[A.ApiRequest], Callable[[Any], Awaitable[Any]]]] = {
            "workflow.push": (A.PushWorkflow, self.workflow_push),
            "workflow.validate": (A.PushWorkflow, self.workflow_validate),
            "workflow.get": (A.WorkflowRef, self.workflow_get),
            "workflow.list": (A.ListWorkflows, self.workflow_list),
            "workflow.activate": (A.WorkflowRef, self.workflow_activate),
            "workflow.deactivate": (A.WorkflowRef, self.workflow_deactivate),
            "workflow.status": (A.WorkflowRef, self.workflow_status),
            "workflow.set_run_strategy": (A.SetRunStrategy, self.workflow_set_run_strategy),
            "workflow.stop": (A.WorkflowAction, self.workflow_stop),
            "workflow.kill": (A.WorkflowAction, self.workflow_kill),
            "workflow.unblock": (A.WorkflowAction, self.workflow_unblock),
            "workflow.archive": (A.RemoveWorkflow, self.workflow_archive),
            "workflow.delete": (A.RemoveWorkflow, self.workflow_delete),
            "tag.set": (A.SetTag, self.tag_set),
            "tag.list": (A.TagRef, self.tag_list),
            "instance.start": (A.StartInstance, self.instance_start),
            "instance.get": (A.InstanceRef, self.instance_get),
            "instance.list": (A.ListInstances, self.instance_list),
            "instance.iterations": (A.ListIterations, self.instance_iterations),
            "instance.stop": (A.InstanceAction, self.instance_stop),
            "instance.kill": (A.InstanceAction, self.instance_kill),
            "instance.restart": (A.InstanceAction, self.instance_restart),
            "instance.unblock": (A.InstanceAction, self.instance_unblock),
            "instance.skip_step": (A.InstanceAction, self.instance_skip_step),
            **SignalApi(self.publisher, self.pool, self.topology).endpoints(),
            **DeadLetterApi(self.nc, self.pool, wake_relay=self.wake_relay).endpoints(),
            **PauseApi(self.pool, self.topology, wake_relay=self.wake_relay).endpoints(),
            **BackfillApi(self.pool, self.topology, wake_relay=self.wake_relay).endpoints(),
        }
        for name, (kind, fn) in endpoints.items():
            resource, verb = name.split(".")
            await self.service.add_endpoint(
                EndpointConfig(
                    name=name.replace(".", "_"),
                    subject=self.topology.api_subject(resource, verb),
                    handler=self._handler(name, kind, fn),
                )
            )
        batcher = asyncio.create_task(self._starts.run(), name="api-start-batcher")
        try:
            await self.wait_stopping()
            await self.service.stop()
            while self._tasks:
                await asyncio.wait(set(self._tasks))
        finally:
            batcher.cancel()
            await asyncio.gather(batcher, return_exceptions=True)

    def _handler(
        self, name: str, kind: type[A.ApiRequest], fn: Callable[[Any], Awaitable[Any]]
    ) -> Callable[[Request], Awaitable[None]]:
        decoder = msgspec.json.Decoder(kind)

        async def handle(req: Request) -> None:
            # Served concurrently: the subscription callback only waits for a free slot (backpressure).
            await self._slots.acquire()
            task = asyncio.create_task(self._serve(name, decoder, fn, req))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return handle

    async def _serve(
        self, name: str, decoder: msgspec.json.Decoder[Any], fn: Callable[[Any], Awaitable[Any]], req: Request
    ) -> None:
        self.requests += 1
        outcome = "ok"
        try:
            with (
                bind_context(endpoint=name),
                consume_span(
                    f"api {name}", req.headers, attributes={"messaging.system": "nats", "rpc.method": name}
                ) as span,
            ):
                try:
                    who = self.authz.check(name, req)  # size, signature, role: trigger/authz.py
                    try:
                        body = decoder.decode(req.data or b"{}")
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        raise ApiError("bad_request", f"{name}: {exc}") from None
                    body = self.authz.bind(body, who)
                    with bind_context(**_ids_of(body)):
                        result = await fn(body)
                    payload = _encoder.encode({"result": result})
                    if len(payload) > max_payload(self.nc):
                        # Never a reply the server refuses (the client would only see a timeout).
                        raise ApiError(
                            "too_large",
                            f"{name}: the reply is {len(payload)} bytes, over the server's max payload of "
                            f"{max_payload(self.nc)}: ask for a smaller page (limit)",
                            {"bytes": len(payload), "max_payload": max_payload(self.nc)},
                        )
                except ApiError as exc:
                    outcome = exc.code
                    payload = _encoder.encode(exc.to_json())
                except Exception as exc:
                    outcome = "internal"
                    log.error("api_request_failed", endpoint=name, error=repr(exc), exc_info=True)
                    payload = _encoder.encode(ApiError("internal", f"{name} failed: {exc}").to_json())
                span.set_attribute("legato.api.result", outcome)
                metrics().api_requests.add(endpoint=name, result=outcome)
                try:
                    await req.respond(payload)
                except Exception as exc:
                    log.warning("api_reply_failed", endpoint=name, error=repr(exc))
        finally:
            self._slots.release()

    # ------------------------------------------------------------------ helpers

    async def compiled(self, conn: asyncpg.Connection, workflow_id: str, version: int) -> CompiledWorkflow:
        key = (workflow_id, version)
        found = self._compiled.get(key)
        if found is None:
            text = await R.load_definition(conn, workflow_id, version)
            found = compile_workflow(definition_from_json(text.encode()))
            if len(self._compiled) > 1024:
                self._compiled.clear()
            self._compiled[key] = found
        return found

    # ------------------------------------------------------------------ workflows

    async def workflow_validate(self, req: A.PushWorkflow) -> dict[str, Any]:
        defn = R.parse_or_raise(req.definition, req.source or "<definition>")
        return {"workflow_id": defn.id, "valid": True}

    async def workflow_push(self, req: A.PushWorkflow) -> dict[str, Any]:
        defn = R.parse_or_raise(req.definition, req.source or "<definition>")
        self._rows.pop(defn.id, None)
        async with self.pool.acquire() as conn, conn.transaction():
            result = await R.push_workflow(
                conn, self.topology, defn, source_text=req.definition, actor=req.actor, activate=req.activate
            )
        self.wake_relay()
        log.info("workflow_pushed", workflow_id=defn.id, version=result["version"], created=result["created"])
        return result

    async def workflow_get(self, req: A.WorkflowRef) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            row = await R.get_workflow_row(conn, req.workflow_id)
            version = req.version or row["active_version"]
            text = await R.load_definition(conn, req.workflow_id, version)
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
            **R.workflow_summary(row),
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

    async def workflow_list(self, req: A.ListWorkflows) -> dict[str, Any]:
        limit = max(1, min(req.limit, 1000))
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT {R.WORKFLOW_COLUMNS} FROM workflow WHERE ($1::text IS NULL OR id > $1) "
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
            lambda r: {**R.workflow_summary(r), "description": descs.get(r["id"])},
        )
        more = len(page) < len(rows)
        return {"workflows": page, "next": page[-1]["workflow_id"] if more and page else None}

    async def workflow_archive(self, req: A.RemoveWorkflow) -> dict[str, Any]:
        """Inactive and hidden from ``workflow list``; its runs and versions are kept (activate or push
        it to bring it back)."""
        if not req.reason.strip():
            raise ApiError("bad_request", "archive: a reason is required (--reason)")
        self._rows.pop(req.workflow_id, None)
        async with self.pool.acquire() as conn, conn.transaction():
            await R.get_workflow_row(conn, req.workflow_id, lock=True)
            active = await R.check_no_active_runs(conn, req.workflow_id, "archive", force=req.force)
            await conn.execute(
                "UPDATE workflow SET active = false, archived_at = coalesce(archived_at, now()), updated_at = now() "
                "WHERE id = $1",
                req.workflow_id,
            )
            await deactivate_signal_triggers(conn, req.workflow_id)
            await R.notify_scheduler(conn, self.topology, req.workflow_id, "archived")
            result = "archived" + (f" with {active} active run(s) (forced)" if active else "")
            await R.record_action(
                conn, new_request_id(), req.workflow_id, "archive", req.actor, req.reason, result
            )
            row = await R.get_workflow_row(conn, req.workflow_id)
        self.wake_relay()
        log.info("workflow_archived", workflow_id=req.workflow_id, actor=req.actor, active_runs=active)
        return {**R.workflow_summary(row), "result": result}

    async def workflow_delete(self, req: A.RemoveWorkflow) -> dict[str, Any]:
        """The workflow, its versions and its runs are gone; the audit record stays."""
        if not req.reason.strip():
            raise ApiError("bad_request", "delete: a reason is required (--reason)")
        async with self.pool.acquire() as conn, conn.transaction():
            await R.get_workflow_row(conn, req.workflow_id, lock=True)
            active = await R.check_no_active_runs(conn, req.workflow_id, "delete", force=req.force)
            counts = await R.delete_workflow(conn, self.topology, req.workflow_id)
            result = f"deleted with {counts['runs']} run(s)" + (
                f", {active} of them active (forced)" if active else ""
            )
            await R.record_action(
                conn, new_request_id(), req.workflow_id, "delete", req.actor, req.reason, result
            )
        self._rows.pop(req.workflow_id, None)
        self.wake_relay()
        log.info("workflow_deleted", workflow_id=req.workflow_id, actor=req.actor, **counts)
        return {"workflow_id": req.workflow_id, "deleted": True, "result": result, **counts}

    async def workflow_activate(self, req: A.WorkflowRef) -> dict[str, Any]:
        self._rows.pop(req.workflow_id, None)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await R.get_workflow_row(conn, req.workflow_id, lock=True)
            version = req.version or row["active_version"]
            compiled = await self.compiled(conn, req.workflow_id, version)
            await R.activate_version(conn, self.topology, req.workflow_id, version, compiled.definition)
            row = await R.get_workflow_row(conn, req.workflow_id)
        self.wake_relay()
        return R.workflow_summary(row)

    async def workflow_deactivate(self, req: A.WorkflowRef) -> dict[str, Any]:
        self._rows.pop(req.workflow_id, None)
        async with self.pool.acquire() as conn, conn.transaction():
            await R.get_workflow_row(conn, req.workflow_id, lock=True)
            await conn.execute(
                "UPDATE workflow SET active = false, updated_at = now() WHERE id = $1", req.workflow_id
            )
            await deactivate_signal_triggers(conn, req.workflow_id)
            await R.notify_scheduler(conn, self.topology, req.workflow_id, "deactivated")
            row = await R.get_workflow_row(conn, req.workflow_id)
        self.wake_relay()
        return R.workflow_summary(row)

    async def workflow_status(self, req: A.WorkflowRef) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            row = await R.get_workflow_row(conn, req.workflow_id)
            counts = {
                r["status"]: r["n"]
                for r in await conn.fetch(
                    "SELECT status, count(*) AS n FROM workflow_instance WHERE workflow_id = $1 GROUP BY status",
                    req.workflow_id,
                )
            }
            running = await conn.fetch(
                f"SELECT {Q.SUMMARY_COLUMNS} FROM workflow_instance WHERE workflow_id = $1 AND status = 'running' "
                "ORDER BY seq LIMIT 100",
                req.workflow_id,
            )
            queued = await conn.fetch(
                f"SELECT {Q.SUMMARY_COLUMNS} FROM workflow_instance WHERE workflow_id = $1 AND status = 'queued' "
                "ORDER BY seq LIMIT 100",
                req.workflow_id,
            )
            why = await Q.explain_queued(conn, list(queued))
            pause = await pause_info(conn, req.workflow_id)
        summary = R.workflow_summary(row)
        queue = queue_state(row["run_strategy"], row["max_concurrency"], row["paused"], row["blocked_by"])
        state = str(queue) if queue is not QueueState.QUEUED else "active" if row["active"] else "inactive"
        return {
            **summary,
            "state": state,
            "pause": pause,
            "counts": counts,
            "running_runs": fit(running, reply_budget(self.nc) // 2, Q.instance_summary),
            "queued_runs": fit(
                list(enumerate(queued)),
                reply_budget(self.nc) // 2,
                lambda ir: {
                    **Q.instance_summary(ir[1]),
                    "position": ir[0] + 1,
                    "reason": why.get(ir[1]["id"], ir[1]["reason"]),
                },
            ),
        }

    async def workflow_set_run_strategy(self, req: A.SetRunStrategy) -> dict[str, Any]:
        if req.run_strategy not in STRATEGIES:
            raise ApiError(
                "bad_request",
                f"run_strategy: must be one of {', '.join(STRATEGIES)}, got {req.run_strategy!r}",
            )
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
        async with self.pool.acquire() as conn, conn.transaction():
            row = await R.get_workflow_row(conn, req.workflow_id, lock=True)
            await R.check_strategy_change(conn, req.workflow_id, req.run_strategy)
            await conn.execute(
                "UPDATE workflow SET run_strategy = $2, max_concurrency = $3, strategy_source = 'api', "
                "updated_at = now() WHERE id = $1",
                req.workflow_id,
                req.run_strategy,
                limit,
            )
            await R.notify_scheduler(conn, self.topology, req.workflow_id, f"run_strategy {req.run_strategy}")
            row = await R.get_workflow_row(conn, req.workflow_id)
        self.wake_relay()
        return R.workflow_summary(row)

    # ------------------------------------------------------------------ concurrency tags

    async def tag_set(self, req: A.SetTag) -> dict[str, Any]:
        if not TAG_NAME.match(req.tag):
            raise ApiError("bad_request", f"tag: must match {TAG_NAME.pattern}, got {req.tag!r}")
        if req.limit is not None and not 0 <= req.limit <= 100_000:
            raise ApiError("bad_request", f"limit: must be 0..100000, got {req.limit}")
        async with self.pool.acquire() as conn, conn.transaction():
            if req.limit is None:
                await conn.execute("DELETE FROM concurrency_tag WHERE tag = $1", req.tag)
            else:
                await conn.execute(
                    "INSERT INTO concurrency_tag (tag, max_running, updated_by) VALUES ($1, $2, $3) "
                    "ON CONFLICT (tag) DO UPDATE SET max_running = $2, updated_by = $3, updated_at = now()",
                    req.tag,
                    req.limit,
                    req.actor,
                )
            # Steps waiting for this tag may be able to run now: wake their workflows.
            waiting = [
                r["workflow_id"]
                for r in await conn.fetch(
                    "SELECT DISTINCT workflow_id FROM tag_waiter WHERE tag = $1", req.tag
                )
            ]
            for wf in waiting:
                await R.notify_scheduler(conn, self.topology, wf, f"tag {req.tag} limit changed")
        self.wake_relay()
        return (
            (await self.tag_list(A.TagRef(tag=req.tag)))["tags"][0]
            if req.limit is not None
            else {"tag": req.tag, "limit": None}
        )

    async def tag_list(self, req: A.TagRef) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT t.tag, t.max_running, t.updated_by, t.updated_at, "
                "(SELECT count(*) FROM tag_permit p WHERE p.tag = t.tag) AS in_use, "
                "(SELECT count(*) FROM tag_waiter w WHERE w.tag = t.tag) AS waiting "
                "FROM concurrency_tag t WHERE ($1::text IS NULL OR t.tag = $1) ORDER BY t.tag",
                req.tag,
            )
            holders = await conn.fetch(
                "SELECT tag, instance_id, step_id, workflow_id, acquired_at FROM tag_permit "
                "WHERE ($1::text IS NULL OR tag = $1) ORDER BY acquired_at LIMIT 500",
                req.tag,
            )
        held: dict[str, list[dict[str, Any]]] = {}
        for h in holders:
            held.setdefault(h["tag"], []).append(
                {"instance_id": h["instance_id"], "step_id": h["step_id"], "workflow_id": h["workflow_id"]}
            )
        if req.tag is not None and not rows:
            raise ApiError("not_found", f"no limit is set for tag {req.tag!r}")
        return {
            "tags": [
                {
                    "tag": r["tag"],
                    "limit": r["max_running"],
                    "in_use": r["in_use"],
                    "waiting": r["waiting"],
                    "held_by": held.get(r["tag"], [])[:20],
                    "updated_by": r["updated_by"],
                    "updated_at": r["updated_at"].isoformat(),
                }
                for r in rows
            ]
        }

    # ------------------------------------------------------------------ operator actions

    async def _action(
        self,
        workflow_id: str,
        action: str,
        *,
        instance_id: str | None,
        step_id: str | None,
        reason: str,
        actor: str | None,
        request_id: str | None,
    ) -> dict[str, Any]:
        if not reason.strip():
            raise ApiError("bad_request", f"{action}: a reason is required (--reason)")
        action_id = request_id or new_request_id()
        msg = ActionRequest(
            action_id=action_id,
            workflow_id=workflow_id,
            action=action,  # type: ignore[arg-type]
            instance_id=instance_id,
            step_id=step_id,
            reason=reason,
            actor=actor or "api",
            requested_at=time.time(),
        )
        async with self.pool.acquire() as conn, conn.transaction():
            await add_to_outbox(
                conn,
                [
                    OutgoingMessage(
                        self.topology.trigger_subject(workflow_id),
                        encode(msg),
                        msg_id=f"action:{action_id}",
                        headers=inject_headers({}),
                    )
                ],
            )
        self.wake_relay()
        return {
            "accepted": True,
            "action_id": action_id,
            "action": action,
            "workflow_id": workflow_id,
            "instance_id": instance_id,
        }

    async def _instance_for_action(
        self, instance_id: str, allowed: tuple[str, ...], action: str
    ) -> asyncpg.Record:
        async with self.pool.acquire() as conn:
            r = await conn.fetchrow(
                "SELECT id, workflow_id, status FROM workflow_instance WHERE id = $1", instance_id
            )
            if r is None:
                raise ApiError("not_found", f"unknown run {instance_id!r}", {"instance_id": instance_id})
            if r["status"] not in allowed:
                raise ApiError(
                    "not_applicable",
                    f"cannot {action} run {instance_id}: it is {r['status']} (allowed when {', '.join(allowed)})",
                    {"status": r["status"]},
                )
        return r

    async def _check_step(self, instance_id: str, step_id: str) -> None:
        """An action naming a step the run does not have is an error, not an accepted no-op."""
        async with self.pool.acquire() as conn:
            r = await conn.fetchrow(
                "SELECT workflow_id, version FROM workflow_instance WHERE id = $1", instance_id
            )
            if r is None:
                raise ApiError("not_found", f"unknown run {instance_id!r}", {"instance_id": instance_id})
            order = (await self.compiled(conn, r["workflow_id"], r["version"])).topo_order
            if step_id in order or await conn.fetchval(
                "SELECT 1 FROM step_run WHERE instance_id = $1 AND step_id = $2", instance_id, step_id
            ):
                return
        shown = ", ".join(order[:20]) + ("…" if len(order) > 20 else "")
        raise ApiError(
            "not_found",
            f"run {instance_id} has no step {step_id!r} (its steps: {shown})",
            {"instance_id": instance_id, "step_id": step_id},
        )

    async def instance_stop(self, req: A.InstanceAction) -> dict[str, Any]:
        r = await self._instance_for_action(req.instance_id, action_statuses("stop"), "stop")
        return await self._action(
            r["workflow_id"],
            "stop",
            instance_id=r["id"],
            step_id=None,
            reason=req.reason,
            actor=req.actor,
            request_id=req.request_id,
        )

    async def instance_kill(self, req: A.InstanceAction) -> dict[str, Any]:
        r = await self._instance_for_action(req.instance_id, action_statuses("kill"), "kill")
        return await self._action(
            r["workflow_id"],
            "kill",
            instance_id=r["id"],
            step_id=None,
            reason=req.reason,
            actor=req.actor,
            request_id=req.request_id,
        )

    async def instance_restart(self, req: A.InstanceAction) -> dict[str, Any]:
        allowed = action_statuses("restart", step_given=bool(req.step_id))
        r = await self._instance_for_action(req.instance_id, allowed, "restart")
        if req.step_id:
            await self._check_step(req.instance_id, req.step_id)
        return await self._action(
            r["workflow_id"],
            "restart",
            instance_id=r["id"],
            step_id=req.step_id,
            reason=req.reason,
            actor=req.actor,
            request_id=req.request_id,
        )

    async def instance_skip_step(self, req: A.InstanceAction) -> dict[str, Any]:
        if not req.step_id:
            raise ApiError("bad_request", "skip_step: step_id is required")
        r = await self._instance_for_action(req.instance_id, action_statuses("skip_step"), "skip a step of")
        await self._check_step(req.instance_id, req.step_id)
        return await self._action(
            r["workflow_id"],
            "skip_step",
            instance_id=r["id"],
            step_id=req.step_id,
            reason=req.reason,
            actor=req.actor,
            request_id=req.request_id,
        )

    async def instance_unblock(self, req: A.InstanceAction) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            r = await conn.fetchrow(
                "SELECT id, workflow_id FROM workflow_instance WHERE id = $1", req.instance_id
            )
            if r is None:
                raise ApiError("not_found", f"unknown run {req.instance_id!r}")
            wf = await R.get_workflow_row(conn, r["workflow_id"])
        if wf["blocked_by"] != r["id"]:
            raise ApiError(
                "not_applicable",
                f"run {r['id']} does not block workflow {r['workflow_id']}"
                + (
                    f" (blocked by {wf['blocked_by']})"
                    if wf["blocked_by"]
                    else " (the workflow is not blocked)"
                ),
            )
        return await self._action(
            r["workflow_id"],
            "unblock",
            instance_id=r["id"],
            step_id=None,
            reason=req.reason,
            actor=req.actor,
            request_id=req.request_id,
        )

    async def _workflow_action(self, req: A.WorkflowAction, action: str) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            wf = await R.get_workflow_row(conn, req.workflow_id)
        if action == "unblock_all" and not wf["blocked_by"]:
            raise ApiError("not_applicable", f"workflow {req.workflow_id} is not blocked")
        return await self._action(
            req.workflow_id,
            action,
            instance_id=None,
            step_id=None,
            reason=req.reason,
            actor=req.actor,
            request_id=req.request_id,
        )

    async def workflow_stop(self, req: A.WorkflowAction) -> dict[str, Any]:
        return await self._workflow_action(req, "stop_all")

    async def workflow_kill(self, req: A.WorkflowAction) -> dict[str, Any]:
        return await self._workflow_action(req, "kill_all")

    async def workflow_unblock(self, req: A.WorkflowAction) -> dict[str, Any]:
        return await self._workflow_action(req, "unblock_all")

    # ------------------------------------------------------------------ runs

    async def _start_target(self, workflow_id: str, version: int | None) -> tuple[int, CompiledWorkflow]:
        """The version a start uses, from a workflow row cached for a second (starts come in bursts; the
        scheduler re-checks activation when it applies the start)."""
        now = time.monotonic()
        cached = self._rows.get(workflow_id)
        if cached is None or now - cached[0] > ROW_CACHE_SECONDS:
            async with self.pool.acquire() as conn:
                row = await R.get_workflow_row(conn, workflow_id)
            cached = (now, row["active"], row["active_version"])
            self._rows[workflow_id] = cached
            if len(self._rows) > 10_000:
                self._rows.clear()
        _, active, active_version = cached
        if not active:
            raise ApiError(
                "inactive",
                f"workflow {workflow_id!r} is inactive: activate it first",
                {"workflow_id": workflow_id},
            )
        chosen = version or active_version
        key = (workflow_id, chosen)
        compiled = self._compiled.get(key)
        if compiled is None:
            async with self.pool.acquire() as conn:
                compiled = await self.compiled(conn, workflow_id, chosen)
        return chosen, compiled

    async def instance_start(self, req: A.StartInstance) -> dict[str, Any]:
        if req.version is not None and req.version < 1:
            raise ApiError(
                "bad_request", f"version: must be >= 1, got {req.version}", {"version": req.version}
            )
        if req.request_id is not None and not 1 <= len(req.request_id) <= 200:
            raise ApiError("bad_request", f"request_id: must be 1..200 characters, got {len(req.request_id)}")
        version, compiled = await self._start_target(req.workflow_id, req.version)
        request_id = req.request_id or new_request_id()
        trigger_key = f"api:{request_id}"
        instance_id = instance_id_for(req.workflow_id, trigger_key)
        # Searchable in a tracing backend: the request span names the run it started.
        trace.get_current_span().set_attribute("legato.instance_id", instance_id)
        # Checked here so a bad start gets a precise error now instead of a failed run later.
        check_run_params(
            compiled,
            req.params,
            workflow_id=req.workflow_id,
            version=version,
            instance_id=instance_id,
            trigger_kind="api",
            now=_now(),
        )
        pending = _PendingStart(
            req=req,
            compiled=compiled,
            instance_id=instance_id,
            trigger_key=trigger_key,
            params=dict(req.params),
            headers=inject_headers({}),
            request_id=request_id,
            digest=request_digest(req.params, req.version),
        )
        return await self._starts.submit(pending)

    async def _apply_starts(self, batch: list[_PendingStart]) -> list[dict[str, Any] | Exception]:
        """One batch of starts: one transaction, then remember what it accepted and wake the relay."""
        out = await self._commit_starts(batch)
        for p, res in zip(batch, out, strict=True):
            if not isinstance(res, Exception):
                self._accepted[p.instance_id] = p.req.workflow_id
        while len(self._accepted) > 100_000:
            self._accepted.popitem(last=False)
        self.wake_relay()
        return out

    async def _commit_starts(self, batch: list[_PendingStart]) -> list[dict[str, Any] | Exception]:
        ids = [p.instance_id for p in batch]
        now = time.time()
        async with self.pool.acquire() as conn, conn.transaction():
            # A run the scheduler created, or a start accepted and not applied yet: the same request_id
            # again is a duplicate when the request is the same, a conflict when it is not.
            existing: dict[str, str] = {}
            digests: dict[str, str | None] = {}
            run_versions: dict[str, int] = {}
            for r in await conn.fetch(
                "SELECT i.id, i.status, i.run_params, i.version, a.request_digest FROM workflow_instance i "
                "LEFT JOIN accepted_start a ON a.instance_id = i.id WHERE i.id = ANY($1::text[])",
                ids,
            ):
                existing[r["id"]] = r["status"]
                digests[r["id"]] = r["request_digest"]
                if r["request_digest"] is None:  # accepted long ago (pruned): compare with the run
                    run_versions[r["id"]] = r["version"]
                    digests[r["id"]] = request_digest(r["run_params"] or {}, None)
            for r in await conn.fetch(
                "SELECT instance_id, request_digest FROM accepted_start WHERE instance_id = ANY($1::text[])",
                ids,
            ):
                if r["instance_id"] not in existing:
                    existing[r["instance_id"]] = "pending"
                    digests[r["instance_id"]] = r["request_digest"]
            out: list[dict[str, Any] | Exception] = []
            msgs: list[OutgoingMessage] = []
            fresh: list[_PendingStart] = []
            for p in batch:
                if p.instance_id in existing:
                    if not _same_request(p, digests.get(p.instance_id), run_versions.get(p.instance_id)):
                        out.append(_conflict(p))
                        continue
                    out.append(
                        {
                            "instance_id": p.instance_id,
                            "workflow_id": p.req.workflow_id,
                            "status": existing[p.instance_id],
                            "duplicate": True,
                        }
                    )
                    continue
                existing[p.instance_id] = "pending"
                digests[p.instance_id] = p.digest
                fresh.append(p)
                out.append(
                    {
                        "instance_id": p.instance_id,
                        "workflow_id": p.req.workflow_id,
                        "status": "pending",
                        "duplicate": False,
                    }
                )
                start = StartRun(
                    workflow_id=p.req.workflow_id,
                    trigger_key=p.trigger_key,
                    instance_id=p.instance_id,
                    trigger=TriggerInfo(kind="api", by=p.req.actor),
                    params=p.params,
                    version=p.req.version,
                    requested_at=now,
                )
                msgs.append(
                    OutgoingMessage(
                        self.topology.trigger_subject(p.req.workflow_id),
                        encode(start),
                        msg_id=f"start:{p.instance_id}",
                        headers=p.headers,
                    )
                )
            await add_to_outbox(conn, msgs)
            if fresh:
                await conn.execute(
                    "INSERT INTO accepted_start (instance_id, workflow_id, request_digest) "
                    "SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING",
                    [p.instance_id for p in fresh],
                    [p.req.workflow_id for p in fresh],
                    [p.digest for p in fresh],
                )
            if now - self._pruned_at > ACCEPTED_PRUNE_SECONDS:
                # Long since applied by the scheduler (or visible as a run): no need to remember them.
                self._pruned_at = now
                await conn.execute("DELETE FROM accepted_start WHERE accepted_at < now() - interval '1 hour'")
        return out

    async def instance_get(self, req: A.InstanceRef) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            run = await conn.fetchrow(
                "SELECT workflow_id, version FROM workflow_instance WHERE id = $1", req.instance_id
            )
            if run is None:
                # Accepted but not yet applied by the scheduler: say so instead of "unknown".
                workflow_id = self._accepted.get(req.instance_id) or await conn.fetchval(
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
                        "status": "pending",
                        "steps": [],
                        "timeline": [],
                    }
                raise ApiError(
                    "not_found", f"unknown run {req.instance_id!r}", {"instance_id": req.instance_id}
                )
            try:
                order = (await self.compiled(conn, run["workflow_id"], run["version"])).topo_order
            except ApiError:
                order = []  # a run failed because its version does not exist: no graph to show
            return await Q.get_instance(
                conn,
                req.instance_id,
                timeline_limit=req.timeline_limit,
                steps_limit=req.steps_limit,
                steps_offset=req.steps_offset,
                order=order,
                budget=reply_budget(self.nc),
            )

    async def instance_list(self, req: A.ListInstances) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            return await Q.list_instances(
                conn,
                workflow_id=req.workflow_id,
                status=req.status,
                since=req.since,
                until=req.until,
                limit=max(1, min(req.limit, 1000)),
                cursor=req.cursor,
                include_children=req.include_children,
                budget=reply_budget(self.nc),
            )

    async def instance_iterations(self, req: A.ListIterations) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            return await Q.list_iterations(
                conn,
                req.instance_id,
                req.step_id,
                status=req.status,
                after=req.after,
                limit=max(1, min(req.limit, 1000)),
                budget=reply_budget(self.nc),
            )


def request_digest(params: dict[str, Any], version: int | None) -> str:
    """What makes two start requests "the same request" for one request_id: params and pinned version."""
    canonical = msgspec.json.encode({"params": params, "version": version}, order="sorted")
    return hashlib.sha256(canonical).hexdigest()


def _same_request(p: _PendingStart, digest: str | None, run_version: int | None) -> bool:
    if digest is None or digest == p.digest:
        return True
    if run_version is not None:
        # A run applied after its accepted_start row was pruned: compare params, and a pinned version.
        same_params = digest == request_digest(p.params, None)
        return same_params and (p.req.version is None or p.req.version == run_version)
    return False


def _conflict(p: _PendingStart) -> ApiError:
    return ApiError(
        "conflict",
        f"request_id {p.request_id!r} was already used for a different start of {p.req.workflow_id} "
        f"(run {p.instance_id}): the same key must carry the same params and version; use a new request_id",
        {"request_id": p.request_id, "instance_id": p.instance_id, "workflow_id": p.req.workflow_id},
    )


def _ids_of(body: Any) -> dict[str, Any]:
    """The workflow/run/step a request is about, for its log lines."""
    return {
        key: getattr(body, key, None)
        for key in ("workflow_id", "instance_id", "step_id")
        if isinstance(getattr(body, key, None), str)
    }


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)
