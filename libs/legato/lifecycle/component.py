"""The shape of every long-lived thing: an async context manager with ``run()`` and ``shutdown()``."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self


class ShutdownRequested(Exception):
    """Raised inside a supervisor's task group to unwind it once shutdown is asked for."""


class Component:
    """Base for services, consumer loops, relays and registries.

    ``run()`` owns the component's lifetime and returns when it has stopped; ``shutdown()`` asks it to
    stop and waits until it has, is idempotent and safe to call before ``run()`` started.
    Subclasses implement ``_run()`` and may override ``_on_shutdown()`` (stop fetching, release resources).
    """

    name: str = "component"
    # Shutdown order: lower stages are stopped (and waited for) first. Producers of outbox rows are
    # stage 0; the outbox relay is stage 1 so it flushes what they committed last.
    shutdown_stage: int = 0

    def __init__(self) -> None:
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._started = False

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def is_running(self) -> bool:
        return self._started and not self._stopped.is_set()

    async def run(self) -> None:
        if self._started:
            raise RuntimeError(f"{self.name} already started")
        self._started = True
        try:
            if not self._stopping.is_set():
                await self._run()
        finally:
            self._stopped.set()

    async def _run(self) -> None:
        raise NotImplementedError

    def request_shutdown(self) -> None:
        """Ask the component to stop without waiting (callable from signal handlers)."""
        if not self._stopping.is_set():
            self._stopping.set()
            self._on_shutdown()

    def _on_shutdown(self) -> None:
        """Hook: stop taking new work (called once, synchronously)."""

    async def shutdown(self) -> None:
        self.request_shutdown()
        if self._started:
            await self._stopped.wait()

    async def wait_stopping(self) -> None:
        await self._stopping.wait()

    async def sleep_or_stop(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; return True when shutdown was requested meanwhile."""
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=max(0.0, seconds))
        except TimeoutError:
            return False
        return True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown()
