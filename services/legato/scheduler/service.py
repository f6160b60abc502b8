"""The scheduler process: partition leases, per-partition consumers, workflow actors, timers."""

from __future__ import annotations

import asyncio

from legato.bus.consumer import ConsumerLoop, Delivery
from legato.bus.streams import ConsumerSpec, keep_work_queues_open
from legato.config.settings import Settings
from legato.lifecycle.component import Component
from legato.protocol.messages import EVENT_DECODER, TRIGGER_DECODER, EventMessage, TriggerMessage
from legato.runtime.host import ServiceHost
from legato.scheduler.actors import ActorRegistry
from legato.scheduler.engine import DispatchLimits
from legato.scheduler.leases import PartitionLeaser, new_incarnation, session_name
from legato.scheduler.liveness import ExecutorWatch
from legato.scheduler.timers import TimerLoop
from legato.telemetry import get_logger
from legato.telemetry.metrics import metrics
from legato.telemetry.tracing import remote_span_context

log = get_logger("legato.scheduler")

# Messages a crashed scheduler had fetched come back after ack_wait; in-flight ones are kept alive by
# the consumer's in_progress() heartbeats (every ack_wait / 3), so a short wait costs nothing.
SCHEDULER_ACK_WAIT = 5.0
# How many of a partition's trigger messages (starts, actions, signal fires) the scheduler holds at once.
# They are applied per workflow, each by its actor, so this is how far behind one workflow's backlog
# another workflow's start on the same partition can still be read: at 1,024 a 10,000-run burst of one
# workflow held its neighbours' starts ~0.9 s at p99, at 4,096 no longer than other partitions' (~0.2 s;
# bench/fairness.py). Each is a small message; the ack waits for its actor's commit, as before.
TRIGGER_WINDOW = 4096


class PartitionConsumers(Component):
    """Runs the trigger and event consumers of the partitions this replica currently owns."""

    name = "partition-consumers"

    def __init__(self, host: ServiceHost, registry: ActorRegistry, *, batch: int = 256) -> None:
        super().__init__()
        self.host = host
        self.registry = registry
        self.batch = batch
        self.loops: dict[int, list[ConsumerLoop[TriggerMessage] | ConsumerLoop[EventMessage]]] = {}
        self.tasks: dict[int, list[asyncio.Task[None]]] = {}

    async def _run(self) -> None:
        await self.wait_stopping()
        await asyncio.gather(*(self.stop_partition(p) for p in list(self.loops)))

    async def _on_trigger(self, d: Delivery[TriggerMessage]) -> None:
        # A run continues the trace of whoever asked for it (the API request, the parent run…).
        await self.registry.deliver(d.message.workflow_id, d.message, remote_span_context(d.headers))

    async def _on_event(self, d: Delivery[EventMessage]) -> None:
        await self.registry.deliver(d.message.workflow_id, d.message)

    async def start_partition(self, partition: int) -> None:
        if partition in self.loops or self.stopping:
            return
        topo = self.host.topology
        assert self.host.dead_letters is not None
        trig: ConsumerLoop[TriggerMessage] = ConsumerLoop(
            self.host.js,
            ConsumerSpec(
                topo.triggers_stream,
                topo.scheduler_triggers_consumer(partition),
                topo.trigger_partition_filter(partition),
                ack_wait=SCHEDULER_ACK_WAIT,
                max_ack_pending=2 * TRIGGER_WINDOW,
            ),
            TRIGGER_DECODER,
            self._on_trigger,
            dead_letters=self.host.dead_letters,
            batch=self.batch,
            max_in_flight=TRIGGER_WINDOW,
            max_deliveries=self.host.settings.max_deliveries,
            deliver_twice=self.host.settings.test_deliver_twice,
            span_name="scheduler apply trigger",
        )
        ev: ConsumerLoop[EventMessage] = ConsumerLoop(
            self.host.js,
            ConsumerSpec(
                topo.events_stream,
                topo.consumer_name("scheduler_events", partition),
                topo.event_partition_filter(partition),
                ack_wait=SCHEDULER_ACK_WAIT,
            ),
            EVENT_DECODER,
            self._on_event,
            dead_letters=self.host.dead_letters,
            batch=self.batch,
            max_in_flight=1024,
            max_deliveries=self.host.settings.max_deliveries,
            deliver_twice=self.host.settings.test_deliver_twice,
            span_name="scheduler apply event",
        )
        self.loops[partition] = [trig, ev]
        self.tasks[partition] = [asyncio.create_task(loop.run(), name=loop.name) for loop in (trig, ev)]
        for task in self.tasks[partition]:
            task.add_done_callback(self._loop_done)

    def _loop_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("partition_consumer_failed", task=task.get_name(), error=repr(task.exception()))
            # A consumer that dies must not leave its partition silently unserved: stop the process.
            self.host.request_shutdown()

    async def stop_partition(self, partition: int) -> None:
        loops = self.loops.pop(partition, [])
        tasks = self.tasks.pop(partition, [])
        await asyncio.gather(*(loop.shutdown() for loop in loops), return_exceptions=True)
        for t in tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def observe_queues(registry: ActorRegistry) -> None:
    """Queue depth by strategy and reason, and blocked workflows, as this replica sees its workflows."""

    def depth() -> list[tuple[float, dict[str, str]]]:
        counts: dict[tuple[str, str], int] = {}
        for actor in list(registry.actors.values()):
            state = actor.state
            if state is None or not state.queue:
                continue
            row = state.row
            if row.paused or (row.run_strategy == "parallel" and row.max_concurrency == 0):
                reason = "paused"
            elif row.run_strategy == "strict_sequential" and row.blocked_by:
                reason = "blocked"
            else:
                reason = "queued"
            key = (row.run_strategy, reason)
            counts[key] = counts.get(key, 0) + len(state.queue)
        return [(float(n), {"strategy": k[0], "reason": k[1]}) for k, n in counts.items()]

    def blocked() -> list[tuple[float, dict[str, str]]]:
        n = sum(1 for a in list(registry.actors.values()) if a.state is not None and a.state.row.blocked_by)
        return [(float(n), {})]

    metrics().queue_depth.observe(depth)
    metrics().workflows_blocked.observe(blocked)


async def run_scheduler(settings: Settings, *, lease_ttl: float = 10.0) -> None:
    """Run a scheduler replica: leases, partition consumers, actors and timers, until shutdown."""
    incarnation = new_incarnation()
    async with ServiceHost("scheduler", settings, application_name=session_name(incarnation)) as host:
        # The keepers of the trigger, event and work streams (the scheduler may publish on all three):
        # a saving, not a guarantee, so a failure is only logged.
        try:
            await keep_work_queues_open(host.js, host.topology)
        except Exception as exc:
            log.warning("work_queue_keepers_not_put", error=repr(exc))
        timers_ref: list[TimerLoop] = []
        registry_ref: list[ActorRegistry] = []
        consumers_ref: list[PartitionConsumers] = []

        async def acquired(p: int) -> None:
            await consumers_ref[0].start_partition(p)
            if timers_ref:
                timers_ref[0].wake()

        async def lost(p: int) -> None:
            await consumers_ref[0].stop_partition(p)
            await registry_ref[0].drop_partition(p)

        leaser = PartitionLeaser(
            host.pool,
            partitions=settings.partitions,
            replica=settings.replica,
            ttl=lease_ttl,
            renew_every=max(0.5, lease_ttl / 5),
            on_acquired=acquired,
            on_lost=lost,
            database_url=settings.database_url,
            on_fatal=host.request_shutdown,
            incarnation=incarnation,
        )
        # One live process per replica id: refuse to start (one clear line) while another holds it.
        await leaser.claim_name()
        timers = TimerLoop(
            host.pool, owned=lambda: sorted(leaser.tokens), deliver=lambda w, m: registry.deliver(w, m)
        )

        registry = ActorRegistry(
            host.pool,
            topology=host.topology,
            leaser=leaser,
            relay_committed=host.relay_committed,
            events_committed=host.events_committed,
            wake_timers=timers.wake,
            dispatch=DispatchLimits(settings.dispatch_window, settings.dispatch_lead),
        )
        consumers = PartitionConsumers(host, registry)
        assert host.publisher is not None
        watch = ExecutorWatch(
            host.nc, host.pool, host.publisher, host.topology, owned=lambda: sorted(leaser.tokens)
        )
        observe_queues(registry)
        timers_ref.append(timers)
        registry_ref.append(registry)
        consumers_ref.append(consumers)
        # Stop order (reverse of this list): stop fetching first, then actors, then give up leases.
        for comp in (leaser, registry, timers, watch, consumers):
            host.add(comp)
        await host.run()
