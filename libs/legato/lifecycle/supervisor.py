"""Supervise a set of components in one ``asyncio.TaskGroup`` with an ordered, bounded shutdown."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Sequence

from legato.lifecycle.component import Component
from legato.telemetry import get_logger

log = get_logger("legato.lifecycle")


def install_signal_handlers(on_signal: Callable[[], None]) -> Callable[[], None]:
    """Route SIGTERM/SIGINT to ``on_signal``; returns a function that restores the defaults."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass

    def restore() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)

    return restore


class Supervisor(Component):
    """Runs components side by side; when one fails or shutdown is asked, stops all in order.

    Ordered shutdown: every component is asked to stop taking work (in reverse start order), in-flight
    work gets ``grace_period`` seconds to finish, what is left is cancelled, then the ``closers``
    run (drain NATS, close the DB pool) — each bounded too.
    """

    name = "supervisor"

    def __init__(
        self,
        components: Sequence[Component],
        *,
        grace_period: float = 10.0,
        closers: Sequence[Callable[[], Awaitable[None]]] = (),
        handle_signals: bool = False,
    ) -> None:
        super().__init__()
        self.components = list(components)
        self.grace_period = grace_period
        self.closers = list(closers)
        self.handle_signals = handle_signals
        self.failure: BaseException | None = None

    async def _run(self) -> None:
        restore = install_signal_handlers(self.request_shutdown) if self.handle_signals else None
        tasks: list[asyncio.Task[None]] = []
        try:
            async with asyncio.TaskGroup() as tg:
                for comp in self.components:
                    tasks.append(tg.create_task(self._guard(comp), name=comp.name))
                tg.create_task(self._stop_when_asked(tasks), name="supervisor-stop")
        finally:
            if restore is not None:
                restore()
            await self._close()
        if self.failure is not None:
            raise self.failure

    async def _guard(self, comp: Component) -> None:
        try:
            await comp.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # One component failing stops the process in order; it is reported, never swallowed.
            log.error("component_failed", component=comp.name, error=repr(exc), exc_info=True)
            if self.failure is None:
                self.failure = exc
        finally:
            if not self.stopping:
                if self.failure is None:
                    log.info("component_exited", component=comp.name)
                self.request_shutdown()

    async def _stop_when_asked(self, tasks: list[asyncio.Task[None]]) -> None:
        await self.wait_stopping()
        log.info("shutdown_started", grace_period=self.grace_period)
        deadline = asyncio.get_running_loop().time() + self.grace_period
        stages = sorted({c.shutdown_stage for c in self.components})
        for stage in stages:
            members = [
                (c, t) for c, t in zip(self.components, tasks, strict=True) if c.shutdown_stage == stage
            ]
            for comp, _ in reversed(members):
                comp.request_shutdown()
            pending = [t for _, t in members if not t.done()]
            if not pending:
                continue
            remaining = max(0.0, deadline - asyncio.get_running_loop().time())
            _done, still = await asyncio.wait(pending, timeout=remaining)
            if still:
                log.warning("shutdown_grace_expired", cancelled=[t.get_name() for t in still])
                for t in still:
                    t.cancel()
                await asyncio.gather(*still, return_exceptions=True)

    async def _close(self) -> None:
        for close in self.closers:
            try:
                await asyncio.wait_for(close(), timeout=max(self.grace_period, 1.0))
            except Exception as exc:
                log.warning("closer_failed", error=repr(exc))
        log.info("shutdown_complete")
