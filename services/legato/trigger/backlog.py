"""How many starts wait for the scheduler, per partition: what the API sheds load on.

Every ``interval`` the probe asks JetStream for each partition's trigger consumer (``consumer_info``:
messages not yet delivered plus delivered and not yet acked) — the starts, actions and signal fires
the scheduler has still to apply there. ``instance.start`` refuses a start with ``overloaded`` while its
workflow's partition holds ``limit`` or more (``LEGATO_API_MAX_BACKLOG``), so a burst the scheduler
cannot absorb is refused with a clear error, which the client retries with backoff, instead of growing
the stream, the wait and the trigger's memory without bound. Starts of workflows on other partitions
go on. The figure is at most ``interval`` old: a burst may pass the limit by what arrives in that time.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from legato.bus.topology import Topology
from legato.lifecycle.component import Component
from legato.telemetry import get_logger

log = get_logger("legato.trigger")

PROBE_SECONDS = 1.0


class BacklogProbe(Component):
    """The scheduler's backlog of each partition's trigger stream, refreshed every ``interval``."""

    name = "api-backlog-probe"

    def __init__(
        self, js: JetStreamContext, topology: Topology, partitions: int, *, interval: float = PROBE_SECONDS
    ) -> None:
        super().__init__()
        self.js = js
        self.topology = topology
        self.partitions = partitions
        self.interval = interval
        self.backlog: dict[int, int] = {}

    def of(self, partition: int) -> int:
        """The last backlog read for ``partition`` (0 before the first read, or with no consumer yet)."""
        return self.backlog.get(partition, 0)

    async def _run(self) -> None:
        while not self.stopping:
            await self.probe()
            if await self.sleep_or_stop(self.interval):
                return

    async def probe(self) -> None:
        """Read every partition's backlog once; a partition that cannot be read keeps its last figure."""
        stream = self.topology.triggers_stream
        for partition in range(self.partitions):
            durable = self.topology.scheduler_triggers_consumer(partition)
            try:
                info = await self.js.consumer_info(stream, durable, timeout=2.0)
            except NotFoundError:
                self.backlog[partition] = 0  # no scheduler has taken the partition yet: nothing queued
                continue
            except Exception as exc:  # an outage or a timeout: keep the last figure
                log.debug("backlog_probe_failed", partition=partition, error=repr(exc))
                continue
            self.backlog[partition] = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
