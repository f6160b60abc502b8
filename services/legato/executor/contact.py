"""How long this executor has been out of touch with NATS: one core-NATS round trip every 0.5 s.

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
from nats.aio.msg import Msg

from legato.executor.lease import FenceLease
from legato.protocol.liveness import CONTACT_PROBE_INTERVAL
from legato.telemetry import get_logger

log = get_logger("legato.executor")


class NatsContact:
    """The time since a round trip through the server last succeeded on ``nc``; ``run()`` keeps it
    current.

    The probe is a request to a subject only this process answers, through the server: what it proves
    is what the schedulers need to hear this executor's heartbeats (plain core-NATS messages). Not a
    JetStream API request: those need the JetStream meta leader, so losing that node in a cluster
    would make every executor fence its steps while their heartbeats still flow. Not ``flush()``: a
    PONG arriving after nats-py's flush timed out breaks its read loop (``InvalidStateError``).
    """

    def __init__(
        self, nc: Client, *, interval: float = CONTACT_PROBE_INTERVAL, lease: FenceLease | None = None
    ) -> None:
        self.nc = nc
        self.subject = f"{nc.new_inbox()}.contact"  # answered by this process alone
        self.timeout = max(1.0, interval * 2)
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
        async def echo(msg: Msg) -> None:
            await msg.respond(b"")

        sub = await self.nc.subscribe(self.subject, cb=echo)
        lost = False
        try:
            while True:
                sent = time.monotonic()
                try:
                    await self.nc.request(self.subject, b"", timeout=self.timeout)
                    self.confirm(sent)  # the server carried our message both ways when it was asked
                    if lost:
                        log.info("nats_contact_regained")
                        lost = False
                except Exception as exc:
                    if not lost:
                        log.warning("nats_contact_lost", error=repr(exc))
                        lost = True
                await asyncio.sleep(self.interval)
        finally:
            try:
                await sub.unsubscribe()
            except Exception:  # closed or reconnecting connection: nothing to clean up
                pass
