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

from legato.bus.connection import nats_auth_options
from legato.bus.topology import Topology
from legato.config.settings import Settings
from legato.protocol.api import ApiError
from legato.protocol.messages import InstanceProgress
from legato.security.keys import Signer
from legato.security.signing import sign_request
from legato.telemetry.tracing import inject_headers

TERMINAL = ("succeeded", "failed", "timed_out", "stopped", "skipped")
_VIOLATION = "permissions violation for publish to"  # nats-py lowercases server errors
_decode_reply = msgspec.json.Decoder(dict[str, Any]).decode
_decode_progress = msgspec.json.Decoder(InstanceProgress).decode


class LegatoClient:
    def __init__(
        self,
        nc: Client,
        topology: Topology,
        *,
        timeout: float = 10.0,
        actor: str | None = None,
        signer: Signer | None = None,
    ) -> None:
        self.nc = nc
        self.topology = topology
        self.timeout = timeout
        # With credentials the actor is the signing identity (the trigger maps the key to a name);
        # without, a self-declared label (accepted only by an install running without credentials).
        self.actor = actor
        self.signer = signer
        self._owns = False
        self._denials: dict[str, set[asyncio.Future[str]]] = {}

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        namespace: str = "",
        timeout: float = 10.0,
        actor: str | None = None,
        creds: str | None = None,
        settings: Settings | None = None,
    ) -> LegatoClient:
        """Connect with the nkey seed ``creds`` (default: ``settings.nats_creds``, else the
        ``LEGATO_NATS_CREDS`` environment variable) and the TLS files of ``settings``/the environment."""
        options = nats_auth_options(settings, creds=creds)
        signer = Signer.from_file(options["nkeys_seed"]) if "nkeys_seed" in options else None
        client: LegatoClient | None = None
        first_error: list[Exception] = []

        async def on_error(exc: Exception) -> None:
            if client is not None:
                client._on_error(exc)
            else:
                first_error[:] = [exc]  # e.g. 'Authorization Violation': clearer than NoServersError

        try:
            servers = [u.strip() for u in url.split(",") if u.strip()]  # one URL or a cluster's list
            nc = await nats.connect(
                servers,
                name="legato-client",
                connect_timeout=5,
                max_reconnect_attempts=3,
                error_cb=on_error,
                **options,
            )
        except Exception as exc:
            why = str(first_error[0]) if first_error else repr(exc)
            raise ConnectionError(f"cannot connect to NATS at {url}: {why}") from exc
        client = cls(nc, Topology(namespace), timeout=timeout, actor=actor, signer=signer)
        client._owns = True
        return client

    def _on_error(self, exc: Exception) -> None:
        """nats-server reports a refused publish asynchronously; fail the request waiting on it now."""
        text = str(exc)
        if _VIOLATION not in text.lower():
            return
        subject = text.split('"')[1].lower() if text.count('"') >= 2 else ""
        for fut in self._denials.get(subject, ()):
            if not fut.done():
                fut.set_result(text)

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
        if self.actor and self.signer is None and "actor" not in body:
            body["actor"] = self.actor
        subject = self.topology.api_subject(resource, verb)
        data = msgspec.json.encode(body)
        headers = inject_headers({})
        if self.signer is not None:
            headers.update(sign_request(self.signer, subject, data))
        denied: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._denials.setdefault(subject.lower(), set()).add(denied)
        request = asyncio.ensure_future(
            self.nc.request(subject, data, timeout=timeout or self.timeout, headers=headers)
        )
        try:
            await asyncio.wait((request, denied), return_when=asyncio.FIRST_COMPLETED)
            if denied.done() and not request.done():
                request.cancel()
                await asyncio.gather(request, return_exceptions=True)
                raise ApiError(
                    "permission_denied",
                    f"{endpoint}: the NATS server refused it: no permission to publish to {subject} "
                    "(your credentials' role does not allow this call)",
                    {"endpoint": endpoint, "subject": subject},
                )
            reply = request.result()
        except nats.errors.MaxPayloadError:
            raise ApiError(
                "request_too_large",
                f"{endpoint}: request is {len(data)} bytes, more than the server's max_payload "
                f"({self.nc.max_payload})",
            ) from None
        except nats.errors.NoRespondersError:
            raise ApiError("unavailable", "no Legato trigger service is answering (is it running?)") from None
        except (nats.errors.TimeoutError, TimeoutError):
            raise ApiError("timeout", f"{endpoint}: no reply within {timeout or self.timeout}s") from None
        finally:
            waiting = self._denials.get(subject.lower())
            if waiting is not None:
                waiting.discard(denied)
                if not waiting:
                    del self._denials[subject.lower()]
            if not request.done():
                request.cancel()
                await asyncio.gather(request, return_exceptions=True)
        answer = _decode_reply(reply.data)
        if "error" in answer:
            err = answer["error"]
            raise ApiError(err.get("code", "error"), err.get("message", ""), err.get("details") or {})
        return answer.get("result")

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
