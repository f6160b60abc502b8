"""What every service process shares: settings, NATS, JetStream, the Postgres pool, the outbox relay,
dead letters, and a supervisor with ordered shutdown on SIGTERM/SIGINT.

A host ``with_database=False`` (the executor) never connects to Postgres: its dead letters are published
on ``legato.deadletter.<service>``, and every host with a database runs the consumer that stores them
(the durable ``deadletters`` on LEGATO_DEADLETTERS, shared, so any stateful replica will do).

Shutdown order: stop fetching -> in-flight work finishes within the grace period -> the rest is
cancelled -> the relay flushes -> the metrics endpoint closes -> NATS is drained -> the pool is closed
-> metrics and spans are flushed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType
from typing import Self

import asyncpg
from nats.aio.client import Client
from nats.js import JetStreamContext

from legato.bus.connection import connect_with
from legato.bus.consumer import ConsumerLoop, DeadLetterSink
from legato.bus.dead_letters import NatsDeadLetters
from legato.bus.publisher import Publisher
from legato.bus.streams import ConsumerSpec, NotifyRetention, await_streams, provision_streams
from legato.bus.topology import Topology
from legato.config.settings import Settings, SettingsError
from legato.lifecycle.component import Component
from legato.lifecycle.supervisor import Supervisor
from legato.protocol.messages import DEAD_LETTER_DECODER, DeadLetterReport
from legato.runtime.metrics_server import OK, MetricsServer
from legato.security.permissions import relay_kinds
from legato.security.wiring import origin_signer
from legato.store.dead_letters import DeadLetterReports, PostgresDeadLetters
from legato.store.install import check_partitions
from legato.store.migrations import migrate
from legato.store.outbox import EventOutboxRelay, OutboxRelay, OutboxRow
from legato.store.pool import close_pool, create_pool
from legato.telemetry import (
    configure_logging,
    configure_metrics,
    configure_tracing,
    get_logger,
    shutdown_metrics,
    shutdown_tracing,
)

# The advisory lock the lifecycle-event relays of all processes take turns with (docs/events.md).
NOTIFY_RELAY_LOCK = 0x4C45_4E4F  # "LENO": legato notify
# Under load the lifecycle-event relay reads event_outbox at most once per NOTIFY_PACE seconds (one read is
# BEGIN, the ordered lock, a read, the PubAcks, a delete, COMMIT), instead of once per scheduler commit:
# at 300 starts/s that was 0.53 reads per run, 0.16 paced. An event then reaches subscribers up to this
# much later; an idle relay reads at once, so a lone run's events are not delayed.
NOTIFY_PACE = 0.02

log = get_logger("legato.runtime")


class ServiceHost:
    """Async context manager owning one service process's connections and components."""

    def __init__(
        self,
        service: str,
        settings: Settings,
        *,
        with_relay: bool = True,
        pool_max: int | None = None,
        configure_process: bool = True,
        with_database: bool = True,
        application_name: str | None = None,
    ) -> None:
        self.service = service
        self.application_name = application_name or f"legato-{service}"
        self.settings = settings
        self.topology = Topology(settings.namespace, settings.partitions)
        self.with_relay = with_relay
        self.pool_max = pool_max
        self.configure_process = configure_process
        self.with_database = with_database
        self.components: list[Component] = []
        self._nc: Client | None = None
        self._pool: asyncpg.Pool | None = None
        self.publisher: Publisher | None = None
        self.relay: OutboxRelay | None = None
        self.notify_relay: OutboxRelay | None = None
        self.dead_letters: DeadLetterSink | None = None
        self.dead_letter_store: ConsumerLoop[DeadLetterReport] | None = None
        self.supervisor: Supervisor | None = None
        self.metrics_server: MetricsServer | None = None

    @property
    def nc(self) -> Client:
        assert self._nc is not None, "ServiceHost not entered"
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        return self.nc.jetstream()

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "ServiceHost not entered"
        return self._pool

    async def __aenter__(self) -> Self:
        problem = self.settings.credentials_problem()
        if problem is not None:
            raise SettingsError(problem)
        if self.configure_process:
            configure_logging(self.service, level=self.settings.log_level, fmt=self.settings.log_format)
            instance = self.settings.replica
            configure_tracing(self.service, instance_id=instance, span_file=self.settings.test_span_file)
            configure_metrics(self.service, instance_id=instance, prometheus=self.settings.metrics_port != 0)
        self._nc = await connect_with(self.settings, name=f"legato-{self.service}")
        if self.with_database:
            await provision_streams(
                self.js,
                self.topology,
                replicas=self.settings.stream_replicas,
                notify=NotifyRetention(
                    self.settings.notify_max_age,
                    self.settings.notify_max_msgs,
                    self.settings.notify_max_bytes,
                ),
                claim_ttl=self.settings.attempt_claim_ttl,
            )
        else:
            # The executor may not create or change streams (its NATS permissions say so): it waits,
            # bounded, for a stateful service to have created them.
            await await_streams(self.js, self.topology)
        # Its rounds are written at once (``write_out``): the relays' rounds are a run's hops.
        self.publisher = Publisher(
            self.nc, sign=origin_signer(self.settings, self.topology), write_through=True
        )
        if not self.with_database:
            self.dead_letters = NatsDeadLetters(self.publisher, self.topology, self.service)
            log.info("service_connected", nats=self.settings.nats_url, database=False)
            return self
        self._pool = await create_pool(
            self.settings.database_url,
            min_size=self.settings.db_pool_min,
            max_size=self.pool_max or self.settings.db_pool_max,
            application_name=self.application_name,
        )
        async with self._pool.acquire() as conn:
            await migrate(conn)
            await check_partitions(conn, self.settings.partitions)
        stored = PostgresDeadLetters(self._pool)
        self.dead_letters = stored
        self.dead_letter_store = ConsumerLoop(
            self.js,
            ConsumerSpec(
                stream=self.topology.deadletter_stream,
                durable=self.topology.consumer_name("deadletters"),
                filter_subject=f"{self.topology.subject_prefix('deadletter')}>",
            ),
            DEAD_LETTER_DECODER,
            DeadLetterReports(stored).handle,
            dead_letters=stored,
            batch=16,
            max_in_flight=16,
            max_deliveries=self.settings.max_deliveries,
            deliver_twice=self.settings.test_deliver_twice,
        )
        if self.with_relay:
            kinds = relay_kinds(self.service)
            if self.service == "scheduler":
                # Lifecycle events have an outbox and a relay of their own: work items never queue
                # behind events; and the event relays of all scheduler replicas take turns (an
                # advisory lock), so events go out in commit order.
                self.relay = OutboxRelay(self._pool, self.publisher)
                self.notify_relay = EventOutboxRelay(
                    self._pool, self.publisher, ordered_lock=NOTIFY_RELAY_LOCK, pace=NOTIFY_PACE
                )
            else:
                self.relay = OutboxRelay(self._pool, self.publisher, kinds=kinds)
        log.info("service_connected", nats=self.settings.nats_url, partitions=self.settings.partitions)
        return self

    def add(self, component: Component) -> Component:
        self.components.append(component)
        return component

    def wake_relay(self) -> None:
        for relay in (self.relay, self.notify_relay):
            if relay is not None:
                relay.wake()

    def events_committed(self) -> None:
        """Lifecycle events a transaction of this process committed (``event_outbox``): relay them now."""
        if self.notify_relay is not None:
            self.notify_relay.wake()

    def relay_committed(self, rows: Sequence[OutboxRow]) -> None:
        """Outbox rows a transaction of this process committed: each relay publishes those of its kinds
        from memory (``OutboxRelay.committed``)."""
        for relay in (self.relay, self.notify_relay):
            if relay is not None:
                relay.committed(rows)

    async def run(self, *, handle_signals: bool = True) -> None:
        comps: list[Component] = list(self.components)
        comps += [relay for relay in (self.relay, self.notify_relay) if relay is not None]
        if self.dead_letter_store is not None:
            comps.append(self.dead_letter_store)
        if self.settings.metrics_port:
            self.metrics_server = MetricsServer(
                self.settings.metrics_host, self.settings.metrics_port, readiness=self.readiness
            )
            comps.append(self.metrics_server)
        self.supervisor = Supervisor(
            comps,
            grace_period=self.settings.grace_period,
            closers=[self._drain_nats, self._close_pool],
            handle_signals=handle_signals,
        )
        log.info("service_started", components=[c.name for c in comps])
        await self.supervisor.run()

    async def readiness(self) -> dict[str, str]:
        """What ``/readyz`` reports: NATS connected, Postgres answering (if used), components running."""
        checks: dict[str, str] = {}
        nc = self._nc
        if nc is None or nc.is_closed:
            checks["nats"] = "closed"
        elif not nc.is_connected:
            checks["nats"] = "reconnecting" if nc.is_reconnecting else "disconnected"
        else:
            checks["nats"] = OK
        if self._pool is not None:
            try:
                async with asyncio.timeout(2.0):
                    async with self._pool.acquire() as conn:
                        await conn.fetchval("SELECT 1")
                checks["postgres"] = OK
            except Exception as exc:
                checks["postgres"] = f"unreachable: {type(exc).__name__}"
        running = self.supervisor is not None and self.supervisor.is_running
        extra = (self.relay, self.notify_relay, self.dead_letter_store)
        for component in self.components + [c for c in extra if c]:
            if component.is_running and not component.stopping:
                checks[component.name] = OK
            else:
                checks[component.name] = "stopped" if running else "not started"
        return checks

    def request_shutdown(self) -> None:
        if self.supervisor is not None:
            self.supervisor.request_shutdown()

    async def _drain_nats(self) -> None:
        if self._nc is not None and not self._nc.is_closed and not self._nc.is_draining:
            try:
                await asyncio.wait_for(self._nc.drain(), timeout=5.0)
            except Exception:
                await self._nc.close()

    async def _close_pool(self) -> None:
        if self._pool is not None:
            await close_pool(self._pool)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.supervisor is None or not self.supervisor.is_running:
            await self._drain_nats()
            await self._close_pool()
        if self.configure_process:
            shutdown_metrics()
            shutdown_tracing()
