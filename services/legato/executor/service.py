"""The executor service: pulls step attempts from ``legato.work.<queue>``, runs them, reports results.

All replicas of one queue share the durable consumer ``executor_<queue>`` and so split the work, and
the KV bucket ``LEGATO_ATTEMPTS`` of attempt claims (``claims.py``): an attempt runs at most once, however
many copies of its work item arrive.
Cancel requests arrive on core NATS (``legato.control.cancel.<attempt_id>``) at every replica.

Shutdown: stop fetching -> running attempts get the grace period to finish and report -> the rest are
cancelled (their processes killed) WITHOUT a result or an ack, so JetStream redelivers them and the next
executor reports them lost -> NATS is drained.
"""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from legato.bus.consumer import ConsumerLoop, DeadLetterSink
from legato.bus.publisher import Publisher, caught_up
from legato.bus.streams import MAX_MSG_SIZE, ConsumerSpec
from legato.bus.topology import Topology
from legato.config.settings import Settings
from legato.executor.attempt import HEADER_ALLOWANCE, AttemptProcessor
from legato.executor.claims import AttemptClaims
from legato.executor.contact import NatsContact
from legato.executor.container_runtime import ContainerRuntime
from legato.executor.heartbeat import ExecutorHeartbeats
from legato.executor.lease import FenceLease
from legato.executor.recent_attempts import RecentCancels, RecentResults
from legato.executor.runners import close_runners, default_runners
from legato.executor.runners.container import ContainerRunner, sweep_containers_while_running
from legato.executor.step_runner import StepFailed
from legato.lifecycle.component import Component
from legato.protocol.liveness import EXECUTOR_FENCE_AFTER
from legato.protocol.messages import WORK_DECODER, CancelAttempt, WorkItem
from legato.runtime.host import ServiceHost
from legato.security.signing import WorkVerifier
from legato.security.wiring import trusted_work, work_verifier
from legato.telemetry import get_logger

log = get_logger("legato.executor")

QUEUE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DEFAULT_ACK_WAIT = 30.0
CANCEL_DECODER = msgspec.json.Decoder(CancelAttempt)


@dataclass(frozen=True)
class ExecutorOptions:
    """How one executor process runs; ``ack_wait`` is shared by all replicas of the queue's consumer."""

    queue: str = "default"
    concurrency: int = 4
    executor_id: str | None = None
    # JetStream redelivers an unacked attempt after this long without a heartbeat (sent every ack_wait/3).
    ack_wait: float = DEFAULT_ACK_WAIT
    # SIGTERM -> SIGKILL for a step's process group on timeout, cancel or shutdown.
    kill_grace: float = 2.0
    started_delay: float = 0.25
    remembered_results: int = 4096
    remembered_cancels: int = 10_000

    @property
    def fence_after(self) -> float:
        """Seconds without NATS before running steps are stopped: before anyone may retry them.

        At most ``EXECUTOR_FENCE_AFTER``, so steps stop before the schedulers declare this executor
        dead (``legato.protocol.liveness``; the guards enforce it by the fence lease in any case). Also
        before the work items can be redelivered: heartbeats go out every ack_wait/3, checked every
        ack_wait/6, so the last one that got through is at most ack_wait/2 older than the last contact;
        its item is redelivered ack_wait after it, and the kill grace and a second of margin must fit;
        never under 3 s (a probe every 0.5 s, answered within 1 s).
        """
        return min(EXECUTOR_FENCE_AFTER, max(3.0, self.ack_wait / 2 - self.kill_grace - 1.0))

    def __post_init__(self) -> None:
        if not QUEUE_NAME.match(self.queue):
            raise ValueError(f"queue: must be 1-64 letters, digits, '_' or '-', got {self.queue!r}")
        if not 1 <= self.concurrency <= 10_000:
            raise ValueError(f"concurrency: must be 1..10000, got {self.concurrency}")
        if self.ack_wait < 2.0:
            # Heartbeats go out every max(1, ack_wait/3) s, checked twice as often: below 2 s they lag.
            raise ValueError(f"ack_wait: must be >= 2 seconds, got {self.ack_wait:g}")
        if self.kill_grace < 0:
            raise ValueError(f"kill_grace: must be >= 0, got {self.kill_grace:g}")


# The most lead-lane messages an executor asks for beyond its free slots while its bulk lane is busy.
LEAD_AHEAD_MAX = 32


class ExecutorService(Component):
    """The consumer loop over one work queue plus the cancel subscription, as one component."""

    name = "executor"

    def __init__(
        self,
        nc: Client,
        topology: Topology,
        dead_letters: DeadLetterSink,
        options: ExecutorOptions,
        *,
        executor_id: str,
        max_deliveries: int = 5,
        replicas: int = 1,
        trusted: WorkVerifier | None = None,
        deliver_twice: bool = False,
    ) -> None:
        super().__init__()
        self.nc = nc
        self.topology = topology
        self.options = options
        self.executor_id = executor_id
        self.http_pool = ThreadPoolExecutor(max_workers=options.concurrency, thread_name_prefix="legato-http")
        # The result must fit one NATS message and one stream message, with room for headers.
        max_result = min(nc.max_payload or MAX_MSG_SIZE, MAX_MSG_SIZE) - HEADER_ALLOWANCE
        publisher = Publisher(nc, timeout=2.0, attempts=3)
        # The claims' creates share the results' PubAck inbox: one reply subscription per connection.
        self.claims = AttemptClaims(
            nc.jetstream(), topology.attempts_bucket, replicas=replicas, acks=publisher.acks
        )
        # The fence lease every step's guard enforces; renewed on each answer from JetStream.
        self.lease = FenceLease(options.fence_after)
        self.contact = NatsContact(nc, lease=self.lease)
        self.attempts = AttemptProcessor(
            publisher,
            default_runners(self.http_pool),
            executor_id=executor_id,
            kill_grace=options.kill_grace,
            started_delay=options.started_delay,
            max_result_bytes=max_result,
            results=RecentResults(max_entries=options.remembered_results),
            cancels=RecentCancels(max_entries=options.remembered_cancels),
            claims=self.claims,
            contact=self.contact,
            fence_after=options.fence_after,
            lease=self.lease,
        )
        self.spec = ConsumerSpec(
            stream=topology.work_stream,
            durable=topology.consumer_name(f"executor_{options.queue}"),
            filter_subject=topology.work_subject(options.queue),
            ack_wait=options.ack_wait,
        )
        # The queue's bulk lane (what a workflow sends beyond its few in the lead lane): served after the
        # lead lane, which meanwhile keeps an eighth of the slots' worth of messages asked for (1..32).
        self.bulk_spec = ConsumerSpec(
            stream=topology.work_stream,
            durable=topology.consumer_name(f"executor_{options.queue}_bulk"),
            filter_subject=topology.work_bulk_subject(options.queue),
            ack_wait=options.ack_wait,
        )
        self.loop: ConsumerLoop[WorkItem] = ConsumerLoop(
            nc.jetstream(),
            self.spec,
            WORK_DECODER,
            trusted_work(self.attempts.handle, trusted),  # only the scheduler's signed items run
            dead_letters=dead_letters,
            # Never fetch more than can run: the rest stays in the stream for other replicas.
            batch=options.concurrency,
            max_in_flight=options.concurrency,
            max_deliveries=max_deliveries,
            span_name=f"process {topology.work_stream}",
            deliver_twice=deliver_twice,
            bulk=self.bulk_spec,
            lead_ahead=max(1, min(LEAD_AHEAD_MAX, options.concurrency // 8)),
        )
        self.ready = asyncio.Event()

    @classmethod
    def on_host(cls, host: ServiceHost, options: ExecutorOptions) -> ExecutorService:
        assert host.dead_letters is not None, "ServiceHost not entered"
        return cls(
            host.nc,
            host.topology,
            host.dead_letters,
            options,
            executor_id=options.executor_id or host.settings.replica,
            max_deliveries=host.settings.max_deliveries,
            replicas=host.settings.stream_replicas,
            trusted=work_verifier(host.settings),
            deliver_twice=host.settings.test_deliver_twice,
        )

    async def _run(self) -> None:
        sub: Subscription | None = None
        contact = asyncio.create_task(self.contact.run(), name="executor:nats-contact")
        sweep = self._container_sweep()
        try:
            await self.claims.open()
            sub = await self.nc.subscribe(
                self.topology.cancel_wildcard, cb=self._on_cancel, pending_msgs_limit=10_000
            )
            await caught_up(self.nc)  # subscribed at the server before the first item is fetched
            log.info(
                "executor_started",
                queue=self.options.queue,
                concurrency=self.options.concurrency,
                executor=self.executor_id,
                consumer=self.spec.durable,
            )
            self.ready.set()
            await self.loop.run()
        finally:
            tasks = [contact] if sweep is None else [contact, sweep]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if sub is not None:
                try:
                    await sub.unsubscribe()
                except Exception as exc:
                    log.debug("cancel_unsubscribe_failed", error=repr(exc))
            self.http_pool.shutdown(wait=False, cancel_futures=True)
            await close_runners(self.attempts.runners)
            self.lease.close()  # every step has ended by now (the consumer loop waited for them)
            log.info("executor_stopped", stats=dict(self.attempts.stats))

    def _container_sweep(self) -> asyncio.Task[None] | None:
        """Removes the step containers left over on this host (``sweep_containers_while_running``),
        when this executor runs container steps and has a runtime CLI: the one its steps run with."""
        runner = self.attempts.runners.get("container")
        if not isinstance(runner, ContainerRunner):
            return None
        try:
            runtime = runner.runtime or ContainerRuntime.from_environment()
        except StepFailed as exc:
            log.warning("container_sweep_off", error=exc.error)
            return None
        if runtime.cli is None:
            return None
        return asyncio.create_task(sweep_containers_while_running(runtime), name="executor:container-sweep")

    def _on_shutdown(self) -> None:
        self.loop.request_shutdown()

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            request = CANCEL_DECODER.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("cancel_request_undecodable", subject=msg.subject, error=str(exc))
            return
        self.attempts.cancel(request.attempt_id, request.reason)


async def run_executor(
    settings: Settings,
    *,
    queue: str,
    concurrency: int,
    executor_id: str | None = None,
    ack_wait: float = DEFAULT_ACK_WAIT,
) -> None:
    """Run an executor for ``queue`` until SIGTERM/SIGINT, then shut down in order."""
    options = ExecutorOptions(
        queue=queue, concurrency=concurrency, executor_id=executor_id, ack_wait=ack_wait
    )
    # Stateless: no database; dead letters go to legato.deadletter.executor for a stateful service.
    async with ServiceHost("executor", settings, with_relay=False, with_database=False) as host:
        service = ExecutorService.on_host(host, options)
        host.add(service)
        # Liveness for the schedulers (legato.scheduler.liveness); stopped after the executor.
        host.add(
            ExecutorHeartbeats(
                host.nc,
                host.topology,
                executor_id=service.executor_id,
                running=service.attempts.running_ids,
            )
        )
        await host.run(handle_signals=True)
