"""``LegatoClient``: the whole API over ``legato.api.<resource>.<verb>``, with typed replies and errors.

Each method builds its request Struct (``legato.protocol.api``) with msgspec validation, so a call with
a wrong type fails before anything is sent (``InvalidRequest`` naming the field); sends it, signed when
the client has credentials; and decodes the reply into its Struct (``legato.protocol.replies``) or
raises the typed exception of the error code (``legato.client.errors``).

Retries are safe by construction: reads and idempotent writes are sent again on a timeout or when no
trigger answers, with bounded exponential backoff; a start, an operator action and a signal are sent
again only with an id that makes the repeat the same request (the client makes one when the caller
gives none); other calls are sent once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import msgspec
import nats
import nats.errors
from nats.aio.client import Client

from legato.bus.connection import nats_auth_options
from legato.bus.topology import Topology
from legato.client.errors import BadReply, InvalidRequest, Unavailable, error_for
from legato.client.events import (
    RECHECK,
    EventSubscription,
    RunRef,
    Since,
    status_or_pending,
    subscribe_runs,
    subscribe_steps,
    wait_runs,
)
from legato.config.settings import Settings
from legato.core.statuses import InstanceStatus
from legato.protocol import api
from legato.protocol.api import ApiError
from legato.protocol.events import RunEvent, StepEvent
from legato.protocol.ids import new_request_id
from legato.protocol.replies import (
    ActionAccepted,
    BackfillInfo,
    BackfillList,
    BackfillStarted,
    DeadLetterDetail,
    DeadLetterInfo,
    DeadLetterPage,
    DeadLetterReplayed,
    InstanceDetail,
    InstancePage,
    InstanceSummary,
    IterationPage,
    Lineage,
    PendingSignalList,
    Reply,
    SignalPage,
    SignalSchemaSet,
    SignalSent,
    StartReply,
    StrategySet,
    TagInfo,
    TagList,
    WorkflowArchived,
    WorkflowDeleted,
    WorkflowDetail,
    WorkflowListItem,
    WorkflowPage,
    WorkflowPaused,
    WorkflowPushed,
    WorkflowStatus,
    WorkflowSummary,
    WorkflowValidated,
    reply_dec_hook,
)
from legato.security.keys import Signer
from legato.security.signing import sign_request
from legato.telemetry.tracing import inject_headers

R = TypeVar("R", bound=Reply)
_VIOLATION = "permissions violation for publish to"  # nats-py lowercases server errors


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

RETRY_ATTEMPTS = 3
"""How many times a retryable call is sent again after a timeout or no responders (4 sends in all)."""
FIRST_CONNECT_ATTEMPTS = 2
"""Tries of each server for the first connection (a wrong or dead URL fails in about 2 s)."""
RECONNECT_ATTEMPTS = 3
"""Tries of each server after a connection was lost."""
RETRY_BASE_DELAY = 0.1
RETRY_MAX_DELAY = 2.0


class LegatoClient:
    """A connection to Legato's API: one method per endpoint, typed replies, typed errors, safe retries.

    ``await LegatoClient.connect(url, creds=…)`` connects (and ``close()``/``async with`` closes);
    ``timeout`` bounds each request, ``retries`` how often a retryable one is sent again.
    """

    def __init__(
        self,
        nc: Client,
        topology: Topology,
        *,
        timeout: float = 10.0,
        actor: str | None = None,
        signer: Signer | None = None,
        retries: int = RETRY_ATTEMPTS,
    ) -> None:
        self.nc = nc
        self.topology = topology
        self.timeout = timeout
        self.retries = max(0, retries)
        self.sent = 0
        """Requests sent so far (a call refused before sending does not count)."""
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
        retries: int = RETRY_ATTEMPTS,
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
                # The first connection: each server twice, 2 s apart, so a wrong URL fails in about 2 s
                # (with 3 it took 7 s before the CLI could say so) ...
                max_reconnect_attempts=FIRST_CONNECT_ATTEMPTS - 1,
                error_cb=on_error,
                **options,
            )
        except Exception as exc:
            why = str(first_error[0]) if first_error else repr(exc)
            raise ConnectionError(f"cannot connect to NATS at {url}: {why}") from exc
        # ... and once connected, a server that goes away is tried RECONNECT_ATTEMPTS times (nats-py reads
        # this option at each reconnect).
        nc.options["max_reconnect_attempts"] = RECONNECT_ATTEMPTS
        client = cls(nc, Topology(namespace), timeout=timeout, actor=actor, signer=signer, retries=retries)
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
        """Close the connection (when ``connect`` opened it)."""
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
        """Call ``resource.verb`` with a plain ``payload``; returns the result as plain JSON values or raises
        the ``LegatoError`` of its code. The low-level escape hatch: prefer the typed methods."""
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
        """Call ``resource.verb`` whose result is the typed ``reply``; raises the ``LegatoError`` of the
        reply's error code."""
        decoder = _typed_decoders.get(reply)
        if decoder is None:
            decoder = _typed_decoders[reply] = msgspec.json.Decoder(
                _Envelope[reply],  # type: ignore[valid-type]
                dec_hook=reply_dec_hook,
            )
        try:
            answer = decoder.decode(await self._request(endpoint, payload, timeout))
        except msgspec.ValidationError as exc:
            raise BadReply("bad_reply", f"{endpoint}: the reply is not a {reply.__name__}: {exc}") from None
        _raise_error(answer.error)
        if answer.result is None:
            raise BadReply("bad_reply", f"{endpoint}: the reply has no result")
        result: R = answer.result
        return result

    async def _request(self, endpoint: str, payload: dict[str, Any] | None, timeout: float | None) -> bytes:
        """Send the request (signed when there are credentials) and return the reply's bytes."""
        resource, verb = endpoint.split(".")
        body = dict(payload or {})
        if self.actor and self.signer is None and body.get("actor") is None:
            body["actor"] = self.actor
        subject = self.topology.api_subject(resource, verb)
        data = msgspec.json.encode(body)
        self.sent += 1
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
                raise error_for(
                    "permission_denied",
                    f"{endpoint}: the NATS server refused it: no permission to publish to {subject} "
                    "(your credentials' role does not allow this call)",
                    {"endpoint": endpoint, "subject": subject},
                )
            reply = request.result()
        except nats.errors.MaxPayloadError:
            raise error_for(
                "request_too_large",
                f"{endpoint}: request is {len(data)} bytes, more than the server's max_payload "
                f"({self.nc.max_payload})",
            ) from None
        except nats.errors.NoRespondersError:
            raise error_for(
                "unavailable", f"{endpoint}: no Legato trigger service is answering (is it running?)"
            ) from None
        except (nats.errors.TimeoutError, TimeoutError):
            raise error_for("timeout", f"{endpoint}: no reply within {timeout or self.timeout}s") from None
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

    # ------------------------------------------------------------------ how every typed call is made

    async def _call(
        self,
        endpoint: str,
        request: type[api.ApiRequest],
        fields: dict[str, Any],
        reply: type[R],
        *,
        retry: bool,
        timeout: float | None,
    ) -> R:
        """Validate ``fields`` as ``request`` (nothing is sent when they are wrong), send, decode ``reply``;
        with ``retry``, send again on a timeout or no responders, at most ``retries`` times, backing off."""
        body = build_request(endpoint, request, fields)
        for attempt in range(self.retries + 1):  # bounded
            try:
                return await self.call_as(endpoint, body, reply, timeout=timeout)
            except Unavailable:
                if not retry or attempt >= self.retries:
                    raise
                delay = min(RETRY_MAX_DELAY, RETRY_BASE_DELAY * 2**attempt)
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
        raise AssertionError("unreachable")  # the loop returns or raises

    # ------------------------------------------------------------------ workflows

    async def push(
        self,
        definition: str,
        *,
        source: str | None = None,
        activate: bool = True,
        timeout: float | None = None,
    ) -> WorkflowPushed:
        """Store a definition (YAML or JSON text) as a new version, or find it stored (same digest: safe to
        send again), and by default activate it. An invalid one raises ``InvalidRequest``."""
        fields = {"definition": definition, "source": source, "activate": activate}
        return await self._call(
            "workflow.push", api.PushWorkflow, fields, WorkflowPushed, retry=True, timeout=timeout
        )

    async def validate(
        self, definition: str, *, source: str | None = None, timeout: float | None = None
    ) -> WorkflowValidated:
        """Check a definition without storing it (an invalid one raises ``InvalidRequest``)."""
        fields = {"definition": definition, "source": source}
        return await self._call(
            "workflow.validate", api.PushWorkflow, fields, WorkflowValidated, retry=True, timeout=timeout
        )

    async def get_workflow(
        self, workflow_id: str, *, version: int | None = None, timeout: float | None = None
    ) -> WorkflowDetail:
        """A workflow with one version's definition (the active one by default) and its last versions."""
        fields = {"workflow_id": workflow_id, "version": version}
        return await self._call(
            "workflow.get", api.WorkflowRef, fields, WorkflowDetail, retry=True, timeout=timeout
        )

    async def list_workflows(
        self,
        *,
        limit: int = 100,
        after: str | None = None,
        include_archived: bool = False,
        timeout: float | None = None,
    ) -> WorkflowPage:
        """One page of workflows by id; pass the page's ``next`` as ``after`` for the next one."""
        fields = {"limit": limit, "after": after, "include_archived": include_archived}
        return await self._call(
            "workflow.list", api.ListWorkflows, fields, WorkflowPage, retry=True, timeout=timeout
        )

    async def iter_workflows(
        self, *, include_archived: bool = False, page_size: int = 100
    ) -> AsyncIterator[WorkflowListItem]:
        """Every workflow, page after page."""
        after: str | None = None
        while True:  # bounded by the number of workflows: each page moves the cursor on
            page = await self.list_workflows(limit=page_size, after=after, include_archived=include_archived)
            for item in page.workflows:
                yield item
            if page.next is None or not page.workflows:
                return
            after = page.next

    async def workflow_status(self, workflow_id: str, *, timeout: float | None = None) -> WorkflowStatus:
        """The workflow's queue: its state, counts per status, the running and queued runs (with why)."""
        return await self._call(
            "workflow.status",
            api.WorkflowRef,
            {"workflow_id": workflow_id},
            WorkflowStatus,
            retry=True,
            timeout=timeout,
        )

    async def activate(
        self, workflow_id: str, *, version: int | None = None, timeout: float | None = None
    ) -> WorkflowSummary:
        """Activate the workflow (at ``version``, else its active version)."""
        fields = {"workflow_id": workflow_id, "version": version}
        return await self._call(
            "workflow.activate", api.WorkflowRef, fields, WorkflowSummary, retry=True, timeout=timeout
        )

    async def deactivate(self, workflow_id: str, *, timeout: float | None = None) -> WorkflowSummary:
        """No new runs: triggers stop firing and starts are refused."""
        return await self._call(
            "workflow.deactivate",
            api.WorkflowRef,
            {"workflow_id": workflow_id},
            WorkflowSummary,
            retry=True,
            timeout=timeout,
        )

    async def set_run_strategy(
        self,
        workflow_id: str,
        run_strategy: str,
        *,
        max_concurrency: int | None = None,
        reason: str = "",
        timeout: float | None = None,
    ) -> StrategySet:
        """Override the definition's run strategy (the workflow's queue must allow the change); who
        (this client's actor) and ``reason`` are recorded in the workflow's audit trail."""
        fields = {
            "workflow_id": workflow_id,
            "run_strategy": run_strategy,
            "max_concurrency": max_concurrency,
            "reason": reason,
            "request_id": new_request_id(),  # the same on a retry: the audit trail records it once
        }
        return await self._call(
            "workflow.set_run_strategy",
            api.SetRunStrategy,
            fields,
            StrategySet,
            retry=True,
            timeout=timeout,
        )

    async def pause_workflow(
        self, workflow_id: str, *, reason: str = "", timeout: float | None = None
    ) -> WorkflowPaused:
        """Pause the workflow: queued runs stay queued, running ones go on (pausing twice changes nothing)."""
        fields = {"workflow_id": workflow_id, "reason": reason}
        return await self._call(
            "workflow.pause", api.WorkflowAction, fields, WorkflowPaused, retry=True, timeout=timeout
        )

    async def resume_workflow(
        self, workflow_id: str, *, reason: str = "", timeout: float | None = None
    ) -> WorkflowPaused:
        """Resume a paused workflow."""
        fields = {"workflow_id": workflow_id, "reason": reason}
        return await self._call(
            "workflow.resume", api.WorkflowAction, fields, WorkflowPaused, retry=True, timeout=timeout
        )

    async def archive_workflow(
        self, workflow_id: str, *, reason: str, force: bool = False, timeout: float | None = None
    ) -> WorkflowArchived:
        """Inactive and hidden from lists, runs and versions kept (``force``: even with active runs)."""
        fields = {"workflow_id": workflow_id, "reason": reason, "force": force}
        return await self._call(
            "workflow.archive", api.RemoveWorkflow, fields, WorkflowArchived, retry=True, timeout=timeout
        )

    async def delete_workflow(
        self, workflow_id: str, *, reason: str, force: bool = False, timeout: float | None = None
    ) -> WorkflowDeleted:
        """Delete the workflow with its versions and runs (sent once: a repeat would be ``NotFound``)."""
        fields = {"workflow_id": workflow_id, "reason": reason, "force": force}
        return await self._call(
            "workflow.delete", api.RemoveWorkflow, fields, WorkflowDeleted, retry=False, timeout=timeout
        )

    async def workflow_action(
        self,
        verb: str,
        workflow_id: str,
        *,
        reason: str,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> ActionAccepted:
        """``workflow.<verb>`` (``stop``, ``kill``, ``unblock``): the action on every run of the workflow.
        Retried with its request id (made here when not given): the same id is one action."""
        fields = {"workflow_id": workflow_id, "reason": reason, "request_id": request_id or new_request_id()}
        return await self._call(
            f"workflow.{_verb(verb, WORKFLOW_VERBS)}",
            api.WorkflowAction,
            fields,
            ActionAccepted,
            retry=True,
            timeout=timeout,
        )

    # ------------------------------------------------------------------ runs

    async def start(
        self,
        workflow_id: str,
        params: dict[str, Any] | None = None,
        *,
        request_id: str | None = None,
        version: int | None = None,
        timeout: float | None = None,
    ) -> StartReply:
        """Start a run. The same ``request_id`` again is the same run (``duplicate``); without one the
        client makes one, so a start retried after a lost reply still makes exactly one run."""
        fields = {
            "workflow_id": workflow_id,
            "params": {} if params is None else params,
            "request_id": request_id or new_request_id(),
            "version": version,
        }
        return await self._call(
            "instance.start", api.StartInstance, fields, StartReply, retry=True, timeout=timeout
        )

    async def get_run(
        self,
        instance_id: str,
        *,
        timeline_limit: int = 200,
        steps_limit: int = 1000,
        steps_offset: int = 0,
        timeout: float | None = None,
    ) -> InstanceDetail:
        """A run with its timeline and a page of its steps (``steps_next``: the ``steps_offset`` of the
        next page). A start accepted and not yet applied is ``pending``."""
        fields = {
            "instance_id": instance_id,
            "timeline_limit": timeline_limit,
            "steps_limit": steps_limit,
            "steps_offset": steps_offset,
        }
        return await self._call(
            "instance.get", api.InstanceRef, fields, InstanceDetail, retry=True, timeout=timeout
        )

    async def list_runs(
        self,
        *,
        workflow_id: str | None = None,
        status: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 50,
        cursor: int | None = None,
        include_children: bool = False,
        timeout: float | None = None,
    ) -> InstancePage:
        """One page of runs, newest first (``since``/``until``: epoch seconds of creation); pass the
        page's ``next_cursor`` as ``cursor`` for the next one."""
        fields = {
            "workflow_id": workflow_id,
            "status": status,
            "since": since,
            "until": until,
            "limit": limit,
            "cursor": cursor,
            "include_children": include_children,
        }
        return await self._call(
            "instance.list", api.ListInstances, fields, InstancePage, retry=True, timeout=timeout
        )

    async def iter_runs(
        self, *, workflow_id: str | None = None, status: str | None = None, page_size: int = 100
    ) -> AsyncIterator[InstanceSummary]:
        """Every run (of ``workflow_id``, in ``status``), newest first, page after page."""
        cursor: int | None = None
        while True:  # bounded by the number of runs: each page moves the cursor on
            page = await self.list_runs(
                workflow_id=workflow_id, status=status, limit=page_size, cursor=cursor
            )
            for run in page.instances:
                yield run
            if page.next_cursor is None or not page.instances:
                return
            cursor = page.next_cursor

    async def iterations(
        self,
        instance_id: str,
        step_id: str,
        *,
        status: str | None = None,
        after: int | None = None,
        limit: int = 100,
        timeout: float | None = None,
    ) -> IterationPage:
        """The child runs of a foreach, loop or subworkflow step, in iteration order (``next``: the
        ``after`` of the next page)."""
        fields = {
            "instance_id": instance_id,
            "step_id": step_id,
            "status": status,
            "after": after,
            "limit": limit,
        }
        return await self._call(
            "instance.iterations", api.ListIterations, fields, IterationPage, retry=True, timeout=timeout
        )

    async def instance_action(
        self,
        verb: str,
        instance_id: str,
        *,
        reason: str,
        step_id: str | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> ActionAccepted:
        """``instance.<verb>`` (``stop``, ``kill``, ``restart``, ``unblock``, ``skip_step``), queued for the
        scheduler. Retried with its request id (made here when not given): the same id is one action."""
        fields = {
            "instance_id": instance_id,
            "reason": reason,
            "step_id": step_id,
            "request_id": request_id or new_request_id(),
        }
        return await self._call(
            f"instance.{_verb(verb, INSTANCE_VERBS)}",
            api.InstanceAction,
            fields,
            ActionAccepted,
            retry=True,
            timeout=timeout,
        )

    async def stop(self, instance_id: str, *, reason: str, request_id: str | None = None) -> ActionAccepted:
        """Stop a run (its attempts are cancelled, it ends ``stopped``)."""
        return await self.instance_action("stop", instance_id, reason=reason, request_id=request_id)

    async def kill(self, instance_id: str, *, reason: str, request_id: str | None = None) -> ActionAccepted:
        """Stop a run at once, without waiting for its attempts to stop."""
        return await self.instance_action("kill", instance_id, reason=reason, request_id=request_id)

    async def restart(
        self, instance_id: str, *, reason: str, from_step: str | None = None, request_id: str | None = None
    ) -> ActionAccepted:
        """Run an ended run again (its failed steps, or from ``from_step`` on)."""
        return await self.instance_action(
            "restart", instance_id, reason=reason, step_id=from_step, request_id=request_id
        )

    async def unblock(
        self, instance_id: str, *, reason: str, request_id: str | None = None
    ) -> ActionAccepted:
        """Let a ``strict_sequential`` workflow go on past this failed run."""
        return await self.instance_action("unblock", instance_id, reason=reason, request_id=request_id)

    async def skip_step(
        self, instance_id: str, step_id: str, *, reason: str, request_id: str | None = None
    ) -> ActionAccepted:
        """Skip a step of a running run: its successors go on without it."""
        return await self.instance_action(
            "skip_step", instance_id, reason=reason, step_id=step_id, request_id=request_id
        )

    # ------------------------------------------------------------------ tags

    async def set_tag(self, tag: str, limit: int | None, *, timeout: float | None = None) -> TagInfo:
        """At most ``limit`` steps with ``tag`` at once (None removes the limit)."""
        fields = {"tag": tag, "limit": limit}
        return await self._call("tag.set", api.SetTag, fields, TagInfo, retry=True, timeout=timeout)

    async def list_tags(self, *, tag: str | None = None, timeout: float | None = None) -> TagList:
        """The limited tags (or one), with permits in use, steps waiting and the holders."""
        return await self._call("tag.list", api.TagRef, {"tag": tag}, TagList, retry=True, timeout=timeout)

    # ------------------------------------------------------------------ signals

    async def send_signal(
        self,
        name: str,
        params: dict[str, Any] | None = None,
        *,
        signal_id: str | None = None,
        timeout: float | None = None,
    ) -> SignalSent:
        """Publish signal ``name`` (stored by JetStream before this returns). The same id twice is one
        signal; without one the client makes one, so a retry never sends it twice."""
        fields = {
            "name": name,
            "params": {} if params is None else params,
            "id": signal_id or new_request_id(),
        }
        return await self._call(
            "signal.send", api.SendSignal, fields, SignalSent, retry=True, timeout=timeout
        )

    async def list_signals(
        self,
        *,
        name: str | None = None,
        rejected: bool = False,
        limit: int = 50,
        before: int | None = None,
        timeout: float | None = None,
    ) -> SignalPage:
        """Stored signals, newest first (``rejected``: only those their schema refused)."""
        fields = {"name": name, "rejected": rejected, "limit": limit, "before": before}
        return await self._call(
            "signal.list", api.ListSignals, fields, SignalPage, retry=True, timeout=timeout
        )

    async def pending_signals(
        self, *, workflow_id: str | None = None, limit: int = 100, timeout: float | None = None
    ) -> PendingSignalList:
        """Joins of multi-signal triggers still missing signals, and steps waiting for one."""
        fields = {"workflow_id": workflow_id, "limit": limit}
        return await self._call(
            "signal.pending", api.PendingSignals, fields, PendingSignalList, retry=True, timeout=timeout
        )

    async def lineage(
        self,
        *,
        name: str | None = None,
        signal_id: str | None = None,
        instance_id: str | None = None,
        depth: int = 5,
        timeout: float | None = None,
    ) -> Lineage:
        """What a signal (``name`` + ``signal_id``) started and unblocked, or what started a run
        (``instance_id``), recursively up to ``depth``."""
        fields = {"name": name, "id": signal_id, "instance_id": instance_id, "depth": depth}
        return await self._call(
            "signal.lineage", api.SignalLineage, fields, Lineage, retry=True, timeout=timeout
        )

    async def set_signal_schema(
        self, name: str, schema: dict[str, Any] | None, *, timeout: float | None = None
    ) -> SignalSchemaSet:
        """Declare the shape of signal ``name`` (``required`` fields, ``fields`` types); None removes it."""
        fields = {"name": name, "schema": schema}
        return await self._call(
            "signal.set_schema", api.SetSignalSchema, fields, SignalSchemaSet, retry=True, timeout=timeout
        )

    # ------------------------------------------------------------------ dead letters

    async def list_dead_letters(
        self,
        *,
        limit: int = 50,
        before: int | None = None,
        include_done: bool = False,
        timeout: float | None = None,
    ) -> DeadLetterPage:
        """Messages no service could process, newest first (``include_done``: replayed and discarded too)."""
        fields = {"limit": limit, "before": before, "include_done": include_done}
        return await self._call(
            "dead_letter.list", api.ListDeadLetters, fields, DeadLetterPage, retry=True, timeout=timeout
        )

    async def get_dead_letter(
        self, dead_letter_id: int, *, payload_offset: int = 0, timeout: float | None = None
    ) -> DeadLetterDetail:
        """One dead letter with (a part of) its payload (``payload_next_offset`` for the next part)."""
        fields = {"id": dead_letter_id, "payload_offset": payload_offset}
        return await self._call(
            "dead_letter.get", api.GetDeadLetter, fields, DeadLetterDetail, retry=True, timeout=timeout
        )

    async def replay_dead_letter(
        self, dead_letter_id: int, *, reason: str = "", timeout: float | None = None
    ) -> DeadLetterReplayed:
        """Republish a dead letter to its subject, once (a repeat says ``already_replayed``)."""
        fields = {"id": dead_letter_id, "reason": reason}
        return await self._call(
            "dead_letter.replay", api.DeadLetterRef, fields, DeadLetterReplayed, retry=True, timeout=timeout
        )

    async def discard_dead_letter(
        self, dead_letter_id: int, *, reason: str = "", timeout: float | None = None
    ) -> DeadLetterInfo:
        """Mark a dead letter as dealt with, without replaying it."""
        fields = {"id": dead_letter_id, "reason": reason}
        return await self._call(
            "dead_letter.discard", api.DeadLetterRef, fields, DeadLetterInfo, retry=True, timeout=timeout
        )

    # ------------------------------------------------------------------ backfills

    async def start_backfill(
        self,
        workflow_id: str,
        start: str,
        end: str,
        *,
        step: str | float = "1d",
        params: dict[str, Any] | None = None,
        concurrency: int = 4,
        priority: str = "low",
        dry_run: bool = False,
        timeout: float | None = None,
    ) -> BackfillStarted:
        """Runs for every period from ``start`` to ``end`` (dates or ISO times) of length ``step``.
        Sent once (each call is a new backfill); ``dry_run`` only plans, and is retried. ``priority``
        (``low``: behind every queued live run, ``normal``, ``high``) orders its queued runs."""
        fields = {
            "workflow_id": workflow_id,
            "start": start,
            "end": end,
            "step": step,
            "params": {} if params is None else params,
            "concurrency": concurrency,
            "priority": priority,
            "dry_run": dry_run,
        }
        return await self._call(
            "backfill.start", api.StartBackfill, fields, BackfillStarted, retry=dry_run, timeout=timeout
        )

    async def list_backfills(
        self, *, workflow_id: str | None = None, limit: int = 50, timeout: float | None = None
    ) -> BackfillList:
        """Backfills, newest first, with their counts."""
        fields = {"workflow_id": workflow_id, "limit": limit}
        return await self._call(
            "backfill.list", api.ListBackfills, fields, BackfillList, retry=True, timeout=timeout
        )

    async def show_backfill(self, backfill_id: str, *, timeout: float | None = None) -> BackfillInfo:
        """A backfill with its counts, throughput, ETA and first failed periods."""
        return await self._call(
            "backfill.show",
            api.BackfillRef,
            {"backfill_id": backfill_id},
            BackfillInfo,
            retry=True,
            timeout=timeout,
        )

    async def backfill_action(
        self, verb: str, backfill_id: str, *, timeout: float | None = None
    ) -> BackfillInfo:
        """``pause``, ``resume`` or ``retry_failed`` a backfill (sent once: a repeated pause is
        ``NotApplicable``)."""
        endpoint = f"backfill.{_verb(verb, ('pause', 'resume', 'retry_failed'))}"
        return await self._call(
            endpoint,
            api.BackfillRef,
            {"backfill_id": backfill_id},
            BackfillInfo,
            retry=False,
            timeout=timeout,
        )

    async def cancel_backfill(
        self, backfill_id: str, *, reason: str, running: bool = False, timeout: float | None = None
    ) -> BackfillInfo:
        """Cancel a backfill's periods not started yet (``running``: stop its running runs too)."""
        fields = {"backfill_id": backfill_id, "reason": reason, "running": running}
        return await self._call(
            "backfill.cancel", api.CancelBackfill, fields, BackfillInfo, retry=True, timeout=timeout
        )

    # ------------------------------------------------------------------ kept for existing callers
    async def get(self, instance_id: str, **extra: Any) -> dict[str, Any]:
        """``instance.get`` as plain JSON values (kept for scripts that index the dict; ``get_run``
        returns the typed ``InstanceDetail``)."""
        result: dict[str, Any] = await self.call("instance.get", {"instance_id": instance_id, **extra})
        return result

    async def wait(self, run: RunRef, *, timeout: float = 300.0, poll: float = RECHECK) -> InstanceDetail:
        """Wait until the run ends and return it, typed (``get_run``); returns on its end event, with
        one read of its status first (``legato.client.events.wait_runs``); ``poll`` is only the
        safety re-read interval. Raises ``TimeoutError`` after ``timeout`` seconds."""
        instance_id = run if isinstance(run, str) else run.instance_id
        await wait_runs(self.nc, self.topology, [run], self._status_of, timeout=timeout, recheck=poll)
        return await self.get_run(instance_id)

    async def _status_of(self, instance_id: str) -> str:
        try:
            return status_or_pending(await self.get(instance_id, timeline_limit=0))
        except ApiError as exc:
            if exc.code != "not_found":
                raise
            return InstanceStatus.PENDING

    # ------------------------------------------------------------------ lifecycle events (events.py)

    async def wait_all(
        self, runs: Iterable[RunRef], *, timeout: float = 300.0, poll: float = RECHECK
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
        raise error_for(error.code, error.message, error.details or {})


INSTANCE_VERBS = ("stop", "kill", "restart", "unblock", "skip_step")
WORKFLOW_VERBS = ("stop", "kill", "unblock")


def _verb(verb: str, known: tuple[str, ...]) -> str:
    """``verb`` when it is one of ``known``, else ``InvalidRequest`` (nothing is sent)."""
    if verb not in known:
        raise InvalidRequest(
            "bad_request", f"verb: must be one of {', '.join(known)}, got {verb!r}", {"field": "verb"}
        )
    return verb


def build_request(endpoint: str, request: type[api.ApiRequest], fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` (None: the default) checked as the request Struct of ``endpoint`` and encoded; a
    wrong type or an unknown field raises ``InvalidRequest`` naming the field, before anything is sent."""
    given = {key: value for key, value in fields.items() if value is not None}
    try:
        checked = msgspec.convert(given, request)
    except msgspec.ValidationError as exc:
        text = str(exc)
        what, _, where = text.partition(" - at `$.")
        field = where.rstrip("`") or next(iter(given), "")
        raise InvalidRequest(
            "bad_request", f"{endpoint}: {field}: {what}", {"field": field, "endpoint": endpoint}
        ) from None
    out: dict[str, Any] = msgspec.to_builtins(checked)
    return {key: value for key, value in out.items() if value is not None}
