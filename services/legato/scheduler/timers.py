"""Fires durable timers (retry backoff, step and run timeouts) for the partitions this replica owns.

Timers are rows; firing one means handing it to its workflow's actor, which deletes the row in the same
transaction that applies it, so a timer fires exactly once even across scheduler restarts, and one that
came due while no scheduler ran fires on the next start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg

from legato.lifecycle.component import Component
from legato.scheduler import repository
from legato.scheduler.mailbox import Message
from legato.telemetry import get_logger

log = get_logger("legato.scheduler")


class TimerLoop(Component):
    """Delivers the due timers of the partitions this replica owns to their workflows' actors."""

    name = "timer-loop"

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        owned: Callable[[], list[int]],
        deliver: Callable[[str, Message], Awaitable[None]],
        max_sleep: float = 1.0,
        batch: int = 500,
    ) -> None:
        super().__init__()
        self.pool = pool
        self.owned = owned
        self.deliver = deliver
        self.max_sleep = max_sleep
        self.batch = batch
        self._wake = asyncio.Event()
        self.fired = 0

    def wake(self) -> None:
        self._wake.set()

    def _on_shutdown(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while not self.stopping:
            sleep = self.max_sleep
            try:
                sleep = await self.fire_due()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("timer_round_failed", error=repr(exc))
            if self.stopping:
                break
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, sleep))
            except TimeoutError:
                pass
            self._wake.clear()

    async def fire_due(self) -> float:
        """Deliver due timers; returns how long to sleep until the next one (bounded)."""
        partitions = self.owned()
        if not partitions:
            return self.max_sleep
        async with self.pool.acquire() as conn:
            rows = await repository.due_timers(conn, partitions, self.batch)
            if not rows:
                wait = await repository.seconds_to_next_timer(conn, partitions)
                return self.max_sleep if wait is None else min(self.max_sleep, max(0.0, wait))
        results = await asyncio.gather(
            *(self.deliver(r.workflow_id, r) for r in rows),
            return_exceptions=True,
        )
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, Exception):
                raise r
            if isinstance(r, Exception):
                log.warning("timer_delivery_failed", error=repr(r))
        self.fired += sum(1 for r in results if not isinstance(r, BaseException))
        return 0.0 if len(rows) == self.batch else 0.01
