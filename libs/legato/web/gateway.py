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

from legato.client import LegatoClient
from legato.config.settings import Settings

MAX_CLIENTS = 64  # distinct identities connected at once (each is one NATS connection)


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
    """Wakes a waiter when a run of ``workflow_id`` (or any workflow) changes: fed by the run lifecycle
    notifications on ``legato.progress.<workflow>``; ``wait`` also returns after ``timeout`` so a missed
    notification costs at most one tick."""

    def __init__(self, client: LegatoClient, workflow_id: str | None = None) -> None:
        self.client = client
        self.workflow_id = workflow_id
        self._event = asyncio.Event()
        self._sub: Any = None
        self.last: dict[str, Any] | None = None

    async def __aenter__(self) -> Changes:
        topology = self.client.topology
        subject = (
            topology.progress_subject(self.workflow_id) if self.workflow_id else topology.progress_wildcard
        )

        async def on_msg(msg: Any) -> None:
            self._event.set()

        self._sub = await self.client.nc.subscribe(subject, cb=on_msg)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

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
