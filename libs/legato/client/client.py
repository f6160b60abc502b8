"""``LegatoClient``: typed calls over ``legato.api.<resource>.<verb>`` with structured errors."""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Any, Self

import msgspec
import nats
import nats.errors
from nats.aio.client import Client

from legato.bus.topology import Topology
from legato.protocol.api import ApiError
from legato.protocol.messages import InstanceProgress
from legato.telemetry.tracing import inject_headers

TERMINAL = ("succeeded", "failed", "timed_out", "stopped", "skipped")
_decode_reply = msgspec.json.Decoder(dict[str, Any]).decode
_decode_progress = msgspec.json.Decoder(InstanceProgress).decode


class LegatoClient:
    def __init__(
        self, nc: Client, topology: Topology, *, timeout: float = 10.0, actor: str | None = None
    ) -> None:
        self.nc = nc
        self.topology = topology
        self.timeout = timeout
        self.actor = actor
        self._owns = False

    @classmethod
    async def connect(
        cls, url: str, *, namespace: str = "", timeout: float = 10.0, actor: str | None = None
    ) -> LegatoClient:
        try:
            servers = [u.strip() for u in url.split(",") if u.strip()]  # one URL or a cluster's list
            nc = await nats.connect(
                servers, name="legato-client", connect_timeout=5, max_reconnect_attempts=3
            )
        except Exception as exc:
            raise ConnectionError(f"cannot connect to NATS at {url}: {exc!r}") from exc
        client = cls(nc, Topology(namespace), timeout=timeout, actor=actor)
        client._owns = True
        return client

    async def close(self) -> None:
        if self._owns and not self.nc.is_closed:
            await self.nc.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def call(
        self, endpoint: str, payload: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        """Call ``resource.verb``; returns the result or raises ``ApiError``."""
        resource, verb = endpoint.split(".")
        body = dict(payload or {})
        if self.actor and "actor" not in body:
            body["actor"] = self.actor
        try:
            reply = await self.nc.request(
                self.topology.api_subject(resource, verb),
                msgspec.json.encode(body),
                timeout=timeout or self.timeout,
                headers=inject_headers({}),
            )
        except nats.errors.NoRespondersError:
            raise ApiError("unavailable", "no Legato trigger service is answering (is it running?)") from None
        except (nats.errors.TimeoutError, TimeoutError):
            raise ApiError("timeout", f"{endpoint}: no reply within {timeout or self.timeout}s") from None
        data = _decode_reply(reply.data)
        if "error" in data:
            err = data["error"]
            raise ApiError(err.get("code", "error"), err.get("message", ""), err.get("details") or {})
        return data.get("result")

    # Convenience wrappers for the common calls.
    async def push(
        self, definition: str, *, source: str | None = None, activate: bool = True
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(
            "workflow.push", {"definition": definition, "source": source, "activate": activate}
        )
        return result

    async def start(
        self,
        workflow_id: str,
        params: dict[str, Any] | None = None,
        *,
        request_id: str | None = None,
        version: int | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"workflow_id": workflow_id, "params": params or {}}
        if request_id:
            body["request_id"] = request_id
        if version is not None:
            body["version"] = version
        result: dict[str, Any] = await self.call("instance.start", body)
        return result

    async def send_signal(
        self, name: str, params: dict[str, Any] | None = None, *, signal_id: str | None = None
    ) -> dict[str, Any]:
        """Publish signal ``name`` (stored by JetStream before this returns); the same id twice is one signal."""
        body: dict[str, Any] = {"name": name, "params": params or {}}
        if signal_id:
            body["id"] = signal_id
        result: dict[str, Any] = await self.call("signal.send", body)
        return result

    async def get(self, instance_id: str, **extra: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("instance.get", {"instance_id": instance_id, **extra})
        return result

    async def wait(self, instance_id: str, *, timeout: float = 300.0, poll: float = 1.0) -> dict[str, Any]:
        """Wait until the run ends; woken by progress notifications, polls as a fallback."""
        woke = asyncio.Event()

        async def on_progress(msg: Any) -> None:
            try:
                if _decode_progress(msg.data).instance_id == instance_id:
                    woke.set()
            except msgspec.DecodeError:
                pass

        sub = await self.nc.subscribe(self.topology.progress_wildcard, cb=on_progress)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    info = await self.get(instance_id, timeline_limit=0)
                except ApiError as exc:
                    if exc.code != "not_found":
                        raise
                    info = {"status": "pending"}
                if info.get("status") in TERMINAL:
                    return await self.get(instance_id)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"run {instance_id} still {info.get('status')} after {timeout}s")
                try:
                    await asyncio.wait_for(woke.wait(), timeout=min(poll, left))
                except TimeoutError:
                    pass
                woke.clear()
        finally:
            await sub.unsubscribe()
