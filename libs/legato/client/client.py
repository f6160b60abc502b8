"""``LegatoClient``: typed calls over ``legato.api.<resource>.<verb>`` with structured errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import msgspec
import nats
import nats.errors
from nats.aio.client import Client

from legato.bus.connection import nats_auth_options
from legato.bus.topology import Topology
from legato.client.events import (
    RECHECK,
    EventSubscription,
    Since,
    status_or_pending,
    subscribe_runs,
    subscribe_steps,
    wait_runs,
)
from legato.config.settings import Settings
from legato.core.statuses import InstanceStatus
from legato.protocol.api import ApiError
from legato.protocol.events import RunEvent, StepEvent
from legato.protocol.messages import InstanceProgress
from legato.protocol.replies import (
    ActionAccepted,
    Reply,
    SignalSent,
    StartReply,
    WorkflowPushed,
    WorkflowSummary,
    WorkflowValidated,
)
from legato.security.keys import Signer
from legato.security.signing import sign_request
from legato.telemetry.tracing import inject_headers

R = TypeVar("R", bound=Reply)
_VIOLATION = "permissions violation for publish to"  # nats-py lowercases server errors
_decode_progress = msgspec.json.Decoder(InstanceProgress).decode


class _ErrorBody(msgspec.Struct, frozen=True):
    code: str = "error"
    message: str = ""
    details: dict[str, Any] | None = None


class _Envelope(msgspec.Struct, Generic[R], frozen=True):
    """``{"result": …}`` or ``{"error": …}``, with the result decoded as a typed reply."""

    result: R | None = None
    error: _ErrorBody | None = None


class _RawEnvelope(msgspec.Struct, frozen=True):
    result: Any = None
    error: _ErrorBody | None = None


_raw_decoder = msgspec.json.Decoder(_RawEnvelope)
_typed_decoders: dict[type[Reply], msgspec.json.Decoder[Any]] = {}


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
        """Call ``resource.verb``; returns the result as plain JSON values or raises ``ApiError``."""
        answer = _raw_decoder.decode(await self._request(endpoint, payload, timeout))
        _raise_error(answer.error)
        return answer.result

    async def call_as(
        self,
        endpoint: str,
        payload: dict[str, Any] | None,
        reply: type[R],
        *,
        timeout: float | None = None,
    ) -> R:
        """Call ``resource.verb`` whose result is the typed ``reply``; raises ``ApiError``."""
        decoder = _typed_decoders.get(reply)
        if decoder is None:
            decoder = _typed_decoders[reply] = msgspec.json.Decoder(_Envelope[reply])  # type: ignore[valid-type]
        try:
            answer = decoder.decode(await self._request(endpoint, payload, timeout))
        except msgspec.ValidationError as exc:
            raise ApiError("bad_reply", f"{endpoint}: the reply is not a {reply.__name__}: {exc}") from None
        _raise_error(answer.error)
        if answer.result is None:
            raise ApiError("bad_reply", f"{endpoint}: the reply has no result")
        result: R = answer.result
        return result

    async def _request(self, endpoint: str, payload: dict[str, Any] | None, timeout: float | None) -> bytes:
        """Send the request (signed when there are credentials) and return the reply's bytes."""
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
        data_out: bytes = reply.data
        return data_out

    # Typed calls: the reply Structs of legato.protocol.replies.
    async def push(
        self, definition: str, *, source: str | None = None, activate: bool = True
    ) -> WorkflowPushed:
        """Store a definition as a new version (or find it stored) and, by default, activate it."""
        return await self.call_as(
            "workflow.push",
            {"definition": definition, "source": source, "activate": activate},
            WorkflowPushed,
        )

    async def validate(self, definition: str, *, source: str | None = None) -> WorkflowValidated:
        """Check a definition without storing it (an invalid one raises ``invalid_definition``)."""
        return await self.call_as(
            "workflow.validate", {"definition": definition, "source": source}, WorkflowValidated
        )

    async def activate(self, workflow_id: str, *, version: int | None = None) -> WorkflowSummary:
        """Activate the workflow (at ``version``, else its active version)."""
        return await self.call_as(
            "workflow.activate", {"workflow_id": workflow_id, "version": version}, WorkflowSummary
        )

    async def deactivate(self, workflow_id: str) -> WorkflowSummary:
        """No new runs: triggers stop firing and starts are refused."""
        return await self.call_as("workflow.deactivate", {"workflow_id": workflow_id}, WorkflowSummary)

    async def set_run_strategy(
        self, workflow_id: str, run_strategy: str, *, max_concurrency: int | None = None
    ) -> WorkflowSummary:
        """Override the definition's run strategy (the workflow's queue must allow the change)."""
        body = {"workflow_id": workflow_id, "run_strategy": run_strategy, "max_concurrency": max_concurrency}
        return await self.call_as("workflow.set_run_strategy", body, WorkflowSummary)

    async def start(
        self,
        workflow_id: str,
        params: dict[str, Any] | None = None,
        *,
        request_id: str | None = None,
        version: int | None = None,
    ) -> StartReply:
        """Start a run; the same ``request_id`` again is the same run (``duplicate``)."""
        body: dict[str, Any] = {"workflow_id": workflow_id, "params": params or {}}
        if request_id:
            body["request_id"] = request_id
        if version is not None:
            body["version"] = version
        return await self.call_as("instance.start", body, StartReply)

    async def instance_action(
        self,
        verb: str,
        instance_id: str,
        *,
        reason: str,
        step_id: str | None = None,
        request_id: str | None = None,
    ) -> ActionAccepted:
        """``instance.<verb>`` (stop, kill, restart, unblock, skip_step), queued for the scheduler."""
        body: dict[str, Any] = {"instance_id": instance_id, "reason": reason}
        if step_id:
            body["step_id"] = step_id
        if request_id:
            body["request_id"] = request_id
        return await self.call_as(f"instance.{verb}", body, ActionAccepted)

    async def workflow_action(
        self, verb: str, workflow_id: str, *, reason: str, request_id: str | None = None
    ) -> ActionAccepted:
        """``workflow.<verb>`` (stop, kill, unblock): the action on every run of the workflow."""
        body: dict[str, Any] = {"workflow_id": workflow_id, "reason": reason}
        if request_id:
            body["request_id"] = request_id
        return await self.call_as(f"workflow.{verb}", body, ActionAccepted)

    async def send_signal(
        self, name: str, params: dict[str, Any] | None = None, *, signal_id: str | None = None
    ) -> SignalSent:
        """Publish signal ``name`` (stored by JetStream before this returns); the same id twice is one signal."""
        body: dict[str, Any] = {"name": name, "params": params or {}}
        if signal_id:
            body["id"] = signal_id
        return await self.call_as("signal.send", body, SignalSent)

    async def get(self, instance_id: str, **extra: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("instance.get", {"instance_id": instance_id, **extra})
        return result

    async def wait(
        self, run: str | StartReply, *, timeout: float = 300.0, poll: float = RECHECK
    ) -> dict[str, Any]:
        """Wait until the run ends and return it (``instance.get``); returns on its end event, with
        one read of its status first (``legato.client.events.wait_runs``); ``poll`` is only the
        safety re-read interval. Raises ``TimeoutError`` after ``timeout`` seconds."""
        instance_id = run if isinstance(run, str) else run.instance_id
        await wait_runs(self.nc, self.topology, [run], self._status_of, timeout=timeout, recheck=poll)
        return await self.get(instance_id)

    async def _status_of(self, instance_id: str) -> str:
        try:
            return status_or_pending(await self.get(instance_id, timeline_limit=0))
        except ApiError as exc:
            if exc.code != "not_found":
                raise
            return InstanceStatus.PENDING

    # ------------------------------------------------------------------ lifecycle events (events.py)

    async def wait_all(
        self, runs: Iterable[str | StartReply], *, timeout: float = 300.0, poll: float = RECHECK
    ) -> set[str]:
        """Wait until every run ended (on their end events); returns their ids."""
        return await wait_runs(self.nc, self.topology, runs, self._status_of, timeout=timeout, recheck=poll)

    async def subscribe_runs(
        self,
        workflow: str | None = None,
        status: str | Iterable[str] | None = None,
        since: Since = None,
        group: str | None = None,
    ) -> EventSubscription[RunEvent]:
        """Run lifecycle events as an async iterator (``docs/events.md``)."""
        return await subscribe_runs(
            self.nc, self.topology, workflow=workflow, status=status, since=since, group=group
        )

    async def subscribe_steps(
        self,
        workflow: str | None = None,
        status: str | Iterable[str] | None = None,
        since: Since = None,
        group: str | None = None,
    ) -> EventSubscription[StepEvent]:
        """Step lifecycle events as an async iterator (``docs/events.md``)."""
        return await subscribe_steps(
            self.nc, self.topology, workflow=workflow, status=status, since=since, group=group
        )


def _raise_error(error: _ErrorBody | None) -> None:
    if error is not None:
        raise ApiError(error.code, error.message, error.details or {})
