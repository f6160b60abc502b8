"""How many messages wait for the scheduler, per partition: what the API sheds load on, and what the
signal router holds signals back on.

Every ``interval`` the probe lists the trigger stream's consumers (``CONSUMER.LIST``, 256 to a page)
and reads, for each partition's scheduler consumer, the messages not yet delivered plus those
delivered and not yet acked: the starts, actions and signal fires the scheduler has still to apply
there. ``instance.start`` refuses a start with ``overloaded`` while its workflow's partition holds
``LEGATO_API_MAX_BACKLOG`` or more, so a burst the scheduler cannot absorb is refused with a clear
error, which the client retries with backoff, instead of growing the stream, the wait and the
trigger's memory without bound; starts of workflows on other partitions go on. The signal router
holds a signal back while a partition it would start a run on holds ``LEGATO_ROUTER_MAX_BACKLOG`` or
more (``signal_router/gate.py``).

One request per 256 partitions, not one per partition: with ``LEGATO_PARTITIONS=256`` a probe of one
``consumer_info`` each made the trigger 256 JetStream API requests a second, idle or not. And only
while asked: after an interval in which nobody asked for a figure (no start, no signal), the probe
waits for the next question and reads again at once. So a figure is at most ``interval`` old while
questions come (a burst may pass the limit by what arrives in that time); the first question after a
quiet spell is answered with the figure from before it, while a fresh one is read.
"""

from __future__ import annotations

import asyncio
import time

from nats.js import JetStreamContext

from legato.bus.topology import Topology
from legato.lifecycle.component import Component
from legato.telemetry import get_logger

log = get_logger("legato.bus")

PROBE_SECONDS = 0.25
LIST_PAGE = 256  # consumers nats-server returns per CONSUMER.LIST request (JSApiListLimit)


class BacklogProbe(Component):
    """The scheduler's backlog of each partition's trigger stream, refreshed every ``interval`` while
    asked for it."""

    name = "backlog-probe"

    def __init__(
        self, js: JetStreamContext, topology: Topology, partitions: int, *, interval: float = PROBE_SECONDS
    ) -> None:
        super().__init__()
        self.js = js
        self.topology = topology
        self.partitions = partitions
        self.interval = interval
        self.backlog: dict[int, int] = {}
        self.requests = 0  # CONSUMER.LIST requests made (for tests)
        self.reads = 0  # complete reads of every partition (a new figure for each)
        self._partition_of = {topology.scheduler_triggers_consumer(p): p for p in range(partitions)}
        self._asked = asyncio.Event()
        self._fresh = asyncio.Event()  # set (and replaced) after each read, failed or not, and on shutdown
        self._failing_since = 0.0  # when the reads began to fail (monotonic), 0 while they work

    def of(self, partition: int) -> int:
        """The last backlog read for ``partition`` (0 before the first read, or with no consumer yet)."""
        self._asked.set()
        return self.backlog.get(partition, 0)

    def stale(self) -> bool:
        """No complete read yet, or every read failed for ten intervals (JetStream does not answer)."""
        failing = self._failing_since and time.monotonic() - self._failing_since > 10 * self.interval
        return self.reads == 0 or bool(failing)

    async def next_read(self) -> None:
        """Wait for the next read, complete or failed (asking for one), or for shutdown. A failed one
        wakes too: after ten, ``stale`` says so, and what waits on the figure decides without it."""
        self._asked.set()
        if not self.stopping:
            await self._fresh.wait()

    def _on_shutdown(self) -> None:
        self._asked.set()
        self._fresh.set()

    async def _run(self) -> None:
        while not self.stopping:
            self._asked.clear()
            await self.probe()
            if await self.sleep_or_stop(self.interval):
                return
            # Nobody asked during the interval: read again when someone does.
            await self._asked.wait()

    async def probe(self) -> None:
        """Read every partition's backlog once. A partition without a consumer has nothing queued (no
        scheduler has taken it yet); if the list cannot be read, every partition keeps its last figure."""
        stream = self.topology.triggers_stream
        found: dict[int, int] = {}
        offset = 0
        try:
            while True:
                self.requests += 1
                page = await self.js.consumers_info(stream, offset=offset or None)
                for info in page:
                    partition = self._partition_of.get(info.name or "")
                    if partition is not None:
                        found[partition] = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
                offset += len(page)
                if len(page) < LIST_PAGE:
                    break
        except Exception as exc:  # an outage, a timeout, a refusal: keep the last figures
            if not self._failing_since:
                log.warning("backlog_probe_failing", stream=stream, error=repr(exc))
                self._failing_since = time.monotonic()
            self._wake()
            return
        if self._failing_since:
            log.info("backlog_probe_recovered", stream=stream)
            self._failing_since = 0.0
        self.record({p: found.get(p, 0) for p in range(self.partitions)})

    def record(self, backlog: dict[int, int]) -> None:
        """Take ``backlog`` as a complete read of every partition, and wake whoever waits for one."""
        self.backlog = backlog
        self.reads += 1
        self._wake()

    def _wake(self) -> None:
        fresh, self._fresh = self._fresh, asyncio.Event()
        fresh.set()
