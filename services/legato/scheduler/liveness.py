"""Executor liveness and the reconciler of unsettled attempts.

Every executor publishes an ``ExecutorHeartbeat`` each second (its id, its boot and the attempts it
runs). This watcher remembers, per attempt, which executor boot last listed it, and sweeps Postgres for
attempts that are not settled yet (``dispatched``/``running``, or cancelled but not confirmed stopped).
It reports one as lost, with an ``AttemptFinished(platform_error)`` on the workflow's event subject,
when:

- the executor boot that last listed it has been silent for ``dead_after`` seconds, or
- its executor (from ``AttemptStarted``) has not been heard at all for ``dead_after`` seconds, or
- its work item was dead-lettered and no live executor lists it.

The workflow's actor applies the report like any result: the attempt becomes ``lost`` with the reason
("executor X lost: no heartbeat for N s") and the step's platform retry policy decides what follows;
a report for an attempt that was settled meanwhile changes nothing. Conservative on purpose: an
attempt whose executor still heartbeats is never reported here (a slow result is not a lost one), and
silence only counts while this watcher itself was connected and not stalled (a paused or cut-off
scheduler blames nobody).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from legato.bus.publisher import OutgoingMessage, Publisher
from legato.bus.topology import Topology, partition_of
from legato.lifecycle.component import Component
from legato.protocol.liveness import EXECUTOR_DEAD_AFTER
from legato.protocol.messages import AttemptFinished, decode_heartbeat, encode
from legato.scheduler import repository
from legato.telemetry import get_logger

log = get_logger("legato.scheduler")

# Executors fence their own steps before this (legato.protocol.liveness): a retry started on this
# verdict never overlaps the lost attempt's processes.
DEAD_AFTER = EXECUTOR_DEAD_AFTER
SWEEP_EVERY = 1.0
SWEEP_LIMIT = 2000
# A report is repeated at most this often while its attempt stays unsettled (e.g. actor busy).
REPORT_AGAIN_AFTER = 30.0
MAX_TRACKED = 200_000


@dataclass
class _Listed:
    executor: str
    boot: str
    at: float  # monotonic time of the last heartbeat that listed the attempt


class ExecutorWatch(Component):
    """Tracks executor heartbeats; reports attempts whose executor is gone (runs in every replica)."""

    name = "executor-watch"

    def __init__(
        self,
        nc: Client,
        pool: asyncpg.Pool,
        publisher: Publisher,
        topology: Topology,
        *,
        owned: Callable[[], list[int]],
        dead_after: float = DEAD_AFTER,
        sweep_every: float = SWEEP_EVERY,
    ) -> None:
        super().__init__()
        self.nc = nc
        self.pool = pool
        self.publisher = publisher
        self.topology = topology
        self.owned = owned
        self.dead_after = dead_after
        self.sweep_every = sweep_every
        # Since when this watcher has heard heartbeats without a gap of its own (connected, not stalled):
        # silence is only counted from then, so a paused or disconnected scheduler never blames executors.
        self.observing_since: float | None = None
        self.last_sweep = 0.0
        self.boots: dict[tuple[str, str], float] = {}  # (executor, boot) -> last heard
        self.executors: dict[str, float] = {}  # executor -> last heard (any boot)
        self.listed: dict[str, _Listed] = {}
        self.reported: dict[str, float] = {}
        self.lost_reported = 0

    # ------------------------------------------------------------------ heartbeats

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = decode_heartbeat(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("heartbeat_undecodable", error=str(exc))
            return
        now = time.monotonic()
        self.boots[(beat.executor, beat.boot)] = now
        self.executors[beat.executor] = now
        for attempt_id in beat.attempts[:MAX_TRACKED]:
            self.listed[attempt_id] = _Listed(beat.executor, beat.boot, now)

    def _forget_old(self, now: float) -> None:
        horizon = now - max(60.0, 10 * self.dead_after)
        for key in [k for k, t in self.boots.items() if t < horizon]:
            del self.boots[key]
        for ex in [k for k, t in self.executors.items() if t < horizon]:
            del self.executors[ex]
        for aid in [k for k, v in self.listed.items() if v.at < horizon]:
            del self.listed[aid]
        for aid in [k for k, t in self.reported.items() if t < now - REPORT_AGAIN_AFTER]:
            del self.reported[aid]

    # ------------------------------------------------------------------ the sweep

    def observe(self, now: float, connected: bool) -> bool:
        """Track this watcher's own gaps; True when it has watched long enough to judge executors."""
        stalled = self.last_sweep and now - self.last_sweep > self.sweep_every + self.dead_after / 2
        self.last_sweep = now
        if not connected:
            self.observing_since = None
            return False
        if self.observing_since is None or stalled:
            self.observing_since = now
        return now - self.observing_since > self.dead_after

    def verdict(self, attempt_id: str, executor: str | None, dead_error: str | None) -> str | None:
        """Why the attempt is lost, or None while it may still run (or wait in its queue)."""
        now = time.monotonic()
        since = self.observing_since if self.observing_since is not None else now
        listed = self.listed.get(attempt_id)
        if listed is not None:
            heard = max(self.boots.get((listed.executor, listed.boot), listed.at), since)
            silent = now - heard
            if silent > self.dead_after:
                return f"executor {listed.executor} lost: no heartbeat for {silent:.0f} s"
            if now - listed.at <= self.dead_after:
                return None  # a live executor runs it
        if dead_error is not None:
            return f"work item dead-lettered: {dead_error}"
        if listed is None and executor:
            heard_at = max(self.executors.get(executor, since), since)
            if now - heard_at > self.dead_after:
                return f"executor {executor} lost: no heartbeat for {now - heard_at:.0f} s"
        return None

    async def sweep(self) -> int:
        now = time.monotonic()
        if not self.observe(now, self.nc.is_connected):
            return 0
        partitions = set(self.owned())
        if not partitions:
            return 0
        self._forget_old(now)
        async with self.pool.acquire() as conn:
            rows = await repository.unsettled_attempts(
                conn, self.topology.work_stream, min(self.dead_after, 1.0), SWEEP_LIMIT
            )
        reported = 0
        for r in rows:
            if partition_of(r.workflow_id, self.topology.partitions) not in partitions:
                continue
            if r.id in self.reported:
                continue
            why = self.verdict(r.id, r.executor, r.dead_error)
            if why is None:
                continue
            listed = self.listed.get(r.id)
            executor = r.executor or (listed.executor if listed else "")
            report = AttemptFinished(
                attempt_id=r.id,
                workflow_id=r.workflow_id,
                instance_id=r.instance_id,
                step_id=r.step_id,
                outcome="platform_error",
                executor=executor,
                started_at=r.started_at.timestamp() if r.started_at else 0.0,
                finished_at=time.time(),
                error=why,
            )
            try:
                await self.publisher.publish(
                    OutgoingMessage(
                        self.topology.event_subject(r.workflow_id),
                        encode(report),
                        msg_id=f"lost:{r.id}",
                    )
                )
            except Exception as exc:
                log.warning("attempt_lost_report_failed", attempt_id=r.id, error=repr(exc))
                continue
            self.reported[r.id] = now
            reported += 1
            self.lost_reported += 1
            log.warning("attempt_lost_reported", attempt_id=r.id, reason=why)
        return reported

    async def _run(self) -> None:
        sub: Subscription | None = None
        try:
            sub = await self.nc.subscribe(
                self.topology.executor_heartbeat_subject, cb=self._on_heartbeat, pending_msgs_limit=10_000
            )
            while not self.stopping:
                try:
                    await self.sweep()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("liveness_sweep_failed", error=repr(exc))
                if await self.sleep_or_stop(self.sweep_every):
                    break
        finally:
            if sub is not None:
                try:
                    await sub.unsubscribe()
                except Exception as exc:
                    log.debug("heartbeat_unsubscribe_failed", error=repr(exc))
