"""The request/reply API: a ``nats.micro`` service named ``legato`` on ``legato.api.<resource>.<verb>``.

Requests are decoded into typed Structs; every outcome is a JSON reply — ``{"result": …}`` or
``{"error": {"code", "message", "details"}}`` — so a client never waits out a timeout for a bad request.
Requests are served concurrently (bounded); ``instance.start`` goes through a group-commit batcher.

This module is the server only; each resource is a module of its own that hands over its endpoints:
``workflow_api`` (workflow.*), ``start_api`` (instance.start), ``run_api`` (instance.get/list/
iterations), ``action_api`` (the operator actions on runs and workflows), ``tag_api``, ``signal_api``,
``dead_letter_api``, ``pause_api`` and ``backfill``. Their replies are typed Structs from
``legato.protocol.replies`` (a page built as a dict to fit one message becomes its Struct through
``endpoints.typed``), which the client decodes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import msgspec
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service

from legato.bus.backlog import BacklogProbe
from legato.bus.publisher import Publisher
from legato.bus.topology import Topology
from legato.lifecycle.component import Component
from legato.protocol import api
from legato.protocol.api import ApiError
from legato.protocol.replies import reply_enc_hook
from legato.store.outbox import OutboxRow
from legato.telemetry import bind_context, get_logger, metrics
from legato.telemetry.tracing import consume_span
from legato.trigger.action_api import ActionApi
from legato.trigger.authz import Authz
from legato.trigger.backfill import BackfillApi
from legato.trigger.dead_letter_api import DeadLetterApi
from legato.trigger.endpoints import Endpoint, Handler
from legato.trigger.pause_api import PauseApi
from legato.trigger.replies import max_payload
from legato.trigger.run_api import RunApi
from legato.trigger.signal_api import SignalApi
from legato.trigger.start_api import StartApi
from legato.trigger.tag_api import TagApi
from legato.trigger.workflow_api import WorkflowApi
from legato.trigger.workflow_cache import WorkflowCache

log = get_logger("legato.trigger")

_encoder = msgspec.json.Encoder(enc_hook=reply_enc_hook)


class ApiService(Component):
    """The ``legato`` micro service: one endpoint per ``resource.verb`` of the resource modules, each
    request decoded, authorised, served in a bounded task and answered with a result or an error."""

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
        wake_backfills: Callable[[], None] = lambda: None,
        backlog: BacklogProbe | None = None,
        max_backlog: int = 0,
        relay_committed: Callable[[Sequence[OutboxRow]], None] | None = None,
        start_pool: asyncpg.Pool | None = None,
    ) -> None:
        """``wake_backfills``: brings the backfill feeder's next round forward (a backfill was started,
        resumed or given failed periods to retry). ``relay_committed``: hands committed starts' outbox
        rows to the relay (``ServiceHost.relay_committed``); None: wake it to read them. ``start_pool``:
        where batches of starts are committed (``StartApi``'s ``commit_pool``)."""
        super().__init__()
        self.nc = nc
        self.wake_backfills = wake_backfills
        # The host's publisher: it signs the signals ``signal.send`` publishes for its caller.
        self.publisher = publisher or Publisher(nc)
        self.pool = pool
        self.topology = topology
        self.wake_relay = wake_relay
        self._slots = asyncio.Semaphore(max_concurrent)
        self._tasks: set[asyncio.Task[None]] = set()
        self.cache = WorkflowCache(pool)
        self.starts = StartApi(
            pool,
            topology,
            self.cache,
            wake_relay=wake_relay,
            relay_committed=relay_committed,
            start_batch=start_batch,
            backlog=backlog,
            max_backlog=max_backlog,
            commit_pool=start_pool,
        )
        self.service: Service | None = None
        self.requests = 0
        self.authz = authz or Authz(None)

    def endpoints(self) -> dict[str, Endpoint]:
        """Every endpoint, by ``resource.verb``, from the resource modules."""
        nc, pool, topology, cache, wake = self.nc, self.pool, self.topology, self.cache, self.wake_relay
        return {
            **WorkflowApi(nc, pool, topology, cache, wake_relay=wake).endpoints(),
            **TagApi(pool, topology, wake_relay=wake).endpoints(),
            **self.starts.endpoints(),
            **RunApi(nc, pool, cache, accepted=self.starts.accepted).endpoints(),
            **ActionApi(pool, topology, cache, wake_relay=wake).endpoints(),
            **SignalApi(self.publisher, pool, topology).endpoints(),
            **DeadLetterApi(nc, pool, wake_relay=wake).endpoints(),
            **PauseApi(pool, topology, wake_relay=wake).endpoints(),
            **BackfillApi(pool, topology, wake_relay=wake, wake_feeder=self.wake_backfills).endpoints(),
        }

    async def _run(self) -> None:
        self.service = await add_service(
            self.nc, name="legato", version="0.1.0", description="Legato workflow orchestrator API"
        )
        endpoints = self.endpoints()
        for name, (kind, fn) in endpoints.items():
            resource, verb = name.split(".")
            await self.service.add_endpoint(
                EndpointConfig(
                    name=name.replace(".", "_"),
                    subject=self.topology.api_subject(resource, verb),
                    handler=self._handler(name, kind, fn),
                )
            )
        batcher = asyncio.create_task(self.starts.run_batcher(), name="api-start-batcher")
        try:
            await self.wait_stopping()
            await self.service.stop()
            while self._tasks:
                await asyncio.wait(set(self._tasks))
        finally:
            batcher.cancel()
            await asyncio.gather(batcher, return_exceptions=True)

    def _handler(
        self, name: str, kind: type[api.ApiRequest], fn: Handler
    ) -> Callable[[Request], Awaitable[None]]:
        decoder = msgspec.json.Decoder(kind)

        async def handle(req: Request) -> None:
            # Served concurrently: the subscription callback only waits for a free slot (backpressure).
            await self._slots.acquire()
            task = asyncio.create_task(self._serve(name, decoder, fn, req))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return handle

    async def _serve(self, name: str, decoder: msgspec.json.Decoder[Any], fn: Handler, req: Request) -> None:
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


def _ids_of(body: Any) -> dict[str, Any]:
    """The workflow/run/step a request is about, for its log lines."""
    return {
        key: getattr(body, key, None)
        for key in ("workflow_id", "instance_id", "step_id")
        if isinstance(getattr(body, key, None), str)
    }
