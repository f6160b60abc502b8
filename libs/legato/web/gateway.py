"""The console's way into Legato: one ``LegatoClient`` per logged-in identity, and change notifications.

Each identity's client connects with that identity's own nkey and signs its requests with it, so
nats-server applies that role's subject permissions, the trigger checks the role again on the signature,
and every action is recorded under the person's name. The console never holds a more powerful identity
than the people who log in to it.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import msgspec

from legato.client import LegatoClient
from legato.config.settings import Settings
from legato.protocol.events import StepEvent, decode_event

MAX_CLIENTS = 64
MAX_PENDING_STEPS = 5000  # step statuses held for one page between two sends  # distinct identities connected at once (each is one NATS connection)


class Gateway:
    """Lazily connected clients, one per identity name; ``close()`` closes them all."""

    def __init__(self, settings: Settings, keys_dir: Path, *, timeout: float = 10.0) -> None:
        self.settings = settings
        self.keys_dir = keys_dir
        self.timeout = timeout
        self._clients: dict[str, LegatoClient] = {}
        self._lock = asyncio.Lock()

    async def client(self, name: str) -> LegatoClient:
        """The client acting as identity ``name`` (connected on first use, reconnected if closed)."""
        existing = self._clients.get(name)
        if existing is not None and not existing.nc.is_closed:
            return existing
        async with self._lock:
            existing = self._clients.get(name)
            if existing is not None and not existing.nc.is_closed:
                return existing
            if len(self._clients) >= MAX_CLIENTS:
                oldest = next(iter(self._clients))
                await self._clients.pop(oldest).close()
            client = await LegatoClient.connect(
                self.settings.nats_url,
                namespace=self.settings.namespace,
                timeout=self.timeout,
                creds=str(self.keys_dir / f"{name}.nk"),
                settings=self.settings,
            )
            self._clients[name] = client
            return client

    async def close(self) -> None:
        """Close every connection (idempotent)."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()


class Changes:
    """Wakes a waiter when a run (``instance_id``, its child runs, or any run of ``workflow_id``, or any
    run at all) changes. Fed by the run lifecycle events (``legato.notify.{run,step}.<workflow>.*``,
    ``legato.protocol.events``; plain subscriptions: a page needs to know *that* something changed, the
    state itself is read with ``instance.get``); ``wait`` also returns after its timeout, so a missed
    event costs at most one tick."""

    def __init__(
        self,
        client: LegatoClient,
        workflow_id: str | None = None,
        *,
        instance_id: str | None = None,
        steps: bool = True,
    ) -> None:
        self.client = client
        self.workflow_id = workflow_id
        self.instance_id = instance_id
        self.steps = steps
        self._event = asyncio.Event()
        self._subs: list[Any] = []
        self.last_at = 0.0  # ``at`` of the newest event seen (the change's commit time)
        # The newest status of each step of ``instance_id`` (and of the run itself, under ""), seen since
        # the last ``take``: sent to the browser at once, before the run is read again.
        self._latest: dict[str, tuple[int, str]] = {}

    async def __aenter__(self) -> Changes:
        topology = self.client.topology
        kinds = ("run", "step") if self.steps else ("run",)

        async def on_msg(msg: Any) -> None:
            try:
                event = decode_event(msg.data)
            except msgspec.DecodeError:
                return
            if self.instance_id is not None and self.instance_id not in (
                event.instance_id,
                getattr(event, "parent_instance_id", None),
            ):
                return
            self.last_at = max(self.last_at, event.at)
            if event.instance_id == self.instance_id and len(self._latest) < MAX_PENDING_STEPS:
                key = event.step_id if isinstance(event, StepEvent) else ""
                if event.seq >= self._latest.get(key, (-1, ""))[0]:
                    self._latest[key] = (event.seq, event.status)
            self._event.set()

        try:
            for kind in kinds:
                subject = topology.notify_filter(kind, self.workflow_id)
                self._subs.append(await self.client.nc.subscribe(subject, cb=on_msg))
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        subs, self._subs = self._subs, []
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def take(self) -> dict[str, str]:
        """The newest status per step (the run's under "") since the last call, and forget them."""
        latest, self._latest = self._latest, {}
        return {key: status for key, (_, status) in latest.items()}

    async def wait(self, timeout: float) -> bool:
        """True when something changed, False after ``timeout`` without a change."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        self._event.clear()
        return True


async def every_workflow(
    client: LegatoClient, *, page: int = 1000, max_pages: int = 100
) -> list[dict[str, Any]]:
    """All workflows (``workflow.list`` page by page, bounded)."""
    out: list[dict[str, Any]] = []
    after: str | None = None
    for _ in range(max_pages):
        res = await client.call("workflow.list", {"limit": page, "after": after})
        out += res.get("workflows", [])
        after = res.get("next")
        if not after:
            break
    return out


async def bounded_gather(coros: list[Any], limit: int = 16) -> list[Any]:
    """Run coroutines with at most ``limit`` at once; results in order (exceptions returned, not raised)."""
    gate = asyncio.Semaphore(limit)

    async def one(coro: Any) -> Any:
        async with gate:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros), return_exceptions=True)
