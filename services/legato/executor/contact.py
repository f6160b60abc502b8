"""How long this executor has been out of touch with JetStream: one account-info request a second.

An executor that cannot reach NATS cannot heartbeat its work items; once they may have been redelivered
(the ack wait after the last heartbeat that got through), another executor can report them lost and the
scheduler can start a retry. Steps are therefore stopped (``AttemptProcessor``'s fence) well before
that, so a retry never runs beside an attempt whose executor is alive but cut off.
"""

from __future__ import annotations

import asyncio
import time

from nats.aio.client import Client

from legato.telemetry import get_logger

log = get_logger("legato.executor")


class NatsContact:
    """The time since JetStream last answered on ``nc``; ``run()`` keeps it current.

    A JetStream API request rather than ``flush()``: a PONG arriving after nats-py's flush timed out
    breaks its read loop (``InvalidStateError``), and an answer proves more than the TCP link anyway.
    """

    def __init__(self, nc: Client, *, interval: float = 1.0) -> None:
        self.js = nc.jetstream(timeout=max(1.0, interval * 2))
        self.interval = interval
        self._last = time.monotonic()

    def silent_for(self) -> float:
        return time.monotonic() - self._last

    async def run(self) -> None:
        lost = False
        while True:
            sent = time.monotonic()
            try:
                await self.js.account_info()
                self._last = sent  # the server was reachable when it was asked
                if lost:
                    log.info("nats_contact_regained")
                    lost = False
            except Exception as exc:
                if not lost:
                    log.warning("nats_contact_lost", error=repr(exc))
                    lost = True
            await asyncio.sleep(self.interval)
