"""Executor liveness: every ``interval`` seconds, one core-NATS message naming this executor, its boot
and the attempts it runs right now.

Schedulers watch these (``legato.scheduler.liveness``): an attempt whose executor has gone silent for
a few seconds is settled as lost at once, instead of after the work item's ack wait. Heartbeats are
best effort: a missed one only matters after several in a row.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from nats.aio.client import Client

from legato.bus.topology import Topology
from legato.lifecycle.component import Component
from legato.protocol.liveness import EXECUTOR_HEARTBEAT_INTERVAL
from legato.protocol.messages import ExecutorHeartbeat, encode
from legato.telemetry import get_logger

log = get_logger("legato.executor")

HEARTBEAT_INTERVAL = EXECUTOR_HEARTBEAT_INTERVAL


class ExecutorHeartbeats(Component):
    """Publishes this executor's heartbeat (its id, boot and running attempts) every ``interval``."""

    name = "executor-heartbeats"
    # Stopped after the executor (stage 0): attempts finishing within the grace period still beat.
    shutdown_stage = 1

    def __init__(
        self,
        nc: Client,
        topology: Topology,
        *,
        executor_id: str,
        running: Callable[[], list[str]],
        interval: float = HEARTBEAT_INTERVAL,
    ) -> None:
        super().__init__()
        self.nc = nc
        self.subject = topology.executor_heartbeat_subject
        self.executor_id = executor_id
        self.running = running
        self.interval = interval
        self.boot = uuid.uuid4().hex[:12]
        self.sent = 0

    async def beat(self) -> None:
        msg = ExecutorHeartbeat(
            executor=self.executor_id,
            boot=self.boot,
            attempts=self.running(),
            interval=self.interval,
            at=time.time(),
        )
        await self.nc.publish(self.subject, encode(msg))
        self.sent += 1

    async def _run(self) -> None:
        while not self.stopping:
            try:
                await self.beat()
            except Exception as exc:  # a disconnected client raises; the next beat tries again
                log.debug("heartbeat_publish_failed", error=repr(exc))
            if await self.sleep_or_stop(self.interval):
                break
