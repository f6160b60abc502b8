"""How long this executor has been out of touch with JetStream: one account-info request every 0.5 s.

An executor that cannot reach NATS cannot heartbeat; after ``EXECUTOR_DEAD_AFTER`` seconds of silence
the scheduler reports its attempts lost and may start their retries elsewhere. Steps are therefore
stopped before that, twice over: ``AttemptProcessor``'s fence (this process's view), and the fence
lease (``lease.py``), renewed here on every answer, which each step's guard enforces on its own even
when this process is frozen.
"""

from __future__ import annotations

import asyncio
import time

from nats.aio.client import Client

from legato.executor.lease import FenceLease
from legato.protocol.liveness import CONTACT_PROBE_INTERVAL
from legato.telemetry import get_logger

log = get_logger("legato.executor")


class NatsContact:
    """The time since JetStream last answered on ``nc``; ``run()`` keeps it current.

    A JetStream API request rather than ``flush()``: a PONG arriving after nats-py's flush timed out
    breaks its read loop (``InvalidStateError``), and an answer proves more than the TCP link anyway.
    """

    def __init__(
        self, nc: Client, *, interval: float = CONTACT_PROBE_INTERVAL, lease: FenceLease | None = None
    ) -> None:
        self.js = nc.jetstream(timeout=max(1.0, interval * 2))
        self.interval = interval
        self.lease = lease
        self._last = time.monotonic()
        self._renew_failing = False
        self.confirm(self._last)  # connected just now: the lease exists before any step starts

    def confirm(self, sent: float) -> None:
        """JetStream answered a request sent at ``sent`` (monotonic): contact held until then."""
        self._last = max(self._last, sent)
        if self.lease is not None:
            try:
                self.lease.renew(self._last)
                self._renew_failing = False
            except OSError as exc:  # the guards fence the steps: a lease that cannot be renewed expires
                if not self._renew_failing:
                    log.warning("fence_lease_renew_failed", error=repr(exc))
                self._renew_failing = True

    def silent_for(self) -> float:
        return time.monotonic() - self._last

    async def run(self) -> None:
        lost = False
        while True:
            sent = time.monotonic()
            try:
                await self.js.account_info()
                self.confirm(sent)  # the server was reachable when it was asked
                if lost:
                    log.info("nats_contact_regained")
                    lost = False
            except Exception as exc:
                if not lost:
                    log.warning("nats_contact_lost", error=repr(exc))
                    lost = True
            await asyncio.sleep(self.interval)
