"""The signal-router process: one consumer of LEGATO_SIGNALS feeding batched ingest, and upkeep
(``since`` replays, expired partial tuples, the pending-joins gauge)."""

from __future__ import annotations

import asyncio
import functools

import asyncpg

from legato.bus.backlog import BacklogProbe
from legato.bus.consumer import ConsumerLoop, Delivery
from legato.bus.streams import ConsumerSpec
from legato.config.settings import Settings
from legato.lifecycle.component import Component
from legato.runtime.host import ServiceHost
from legato.security.wiring import signal_origins
from legato.signal_router.gate import FireGate
from legato.signal_router.ingest import RawPayload, SignalIngest
from legato.signal_router.matching import Signal, TriggerTable, route
from legato.store.signal_triggers import lock_signal_triggers
from legato.store.transactions import run_transaction
from legato.telemetry import bind_context, get_logger, metrics

log = get_logger("legato.signal_router")

REPLAY_PAGE = 500
EXPIRED_GRACE_SECONDS = 3600.0


class SignalUpkeep(Component):
    """Replays stored signals into triggers registered with ``since``, drops long-expired partial
    tuples, and keeps the ``legato.joins.pending`` gauge current."""

    name = "signal-upkeep"

    def __init__(self, pool: asyncpg.Pool, ingest: SignalIngest, *, interval: float = 2.0) -> None:
        super().__init__()
        self.pool = pool
        self.ingest = ingest
        self.interval = interval
        self.pending = 0
        metrics().joins_pending.observe(lambda: [(float(self.pending), {})])

    async def _run(self) -> None:
        while not self.stopping:
            try:
                await self.upkeep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("signal_upkeep_failed", error=repr(exc))
            await self.sleep_or_stop(self.interval)

    async def upkeep(self) -> None:
        async with self.pool.acquire() as conn:
            due = await conn.fetch(
                "SELECT workflow_id, trigger_id, version FROM signal_trigger "
                "WHERE active AND since IS NOT NULL AND caught_up_version IS DISTINCT FROM version"
            )
            # Partial tuples long expired, and fired ones past their expiry (the fire row stays, so a
            # late copy completing the tuple again never starts a second run).
            await conn.execute(
                "DELETE FROM signal_join WHERE ctid = ANY(ARRAY(SELECT ctid FROM signal_join "
                "WHERE expires_at < now() - make_interval(secs => $1) LIMIT 1000))",
                EXPIRED_GRACE_SECONDS,
            )
            self.pending = int(
                await conn.fetchval(
                    "SELECT count(*) FROM signal_join WHERE fired_at IS NULL AND expires_at > now()"
                )
            )
        for r in due:
            if self.stopping:
                return
            with bind_context(workflow_id=r["workflow_id"]):
                await self.replay(r["workflow_id"], r["trigger_id"], r["version"])

    async def replay(self, workflow_id: str, trigger_id: str, version: int) -> None:
        """Feed the stored signals since the trigger's ``since`` through it (idempotent), page by page."""
        after = 0
        total = 0
        while not self.stopping:
            last, count, done = await run_transaction(
                self.pool,
                functools.partial(
                    self._replay_page,
                    after=after,
                    workflow_id=workflow_id,
                    trigger_id=trigger_id,
                    version=version,
                ),
            )
            total += count
            if done:
                log.info("signal_trigger_replayed", trigger=trigger_id, version=version, signals=total)
                return
            after = last

    async def _replay_page(
        self, conn: asyncpg.Connection, *, workflow_id: str, trigger_id: str, version: int, after: int
    ) -> tuple[int, int, bool]:
        await lock_signal_triggers(conn, shared=True)
        table = await self.ingest.triggers(conn)
        t = table.triggers.get((workflow_id, trigger_id))
        if t is None or t.version != version:
            return after, 0, True
        rows = await conn.fetch(
            "SELECT seq, name, id, params, published_at, traceparent FROM signal "
            "WHERE name = ANY($1::text[]) AND NOT rejected AND published_at >= $2 AND seq > $3 "
            "ORDER BY seq LIMIT $4",
            t.legs,
            t.counts_from,
            after,
            REPLAY_PAGE,
        )
        only = TriggerTable.build(table.epoch, [t])
        members = [
            m
            for r in rows
            for m in route(Signal(r["name"], r["id"], r["params"], r["published_at"], r["traceparent"]), only)
        ]
        if await self.ingest.apply_members(conn, members):
            self.ingest.wake_relay()
        done = len(rows) < REPLAY_PAGE
        if done:
            await conn.execute(
                "UPDATE signal_trigger SET caught_up_version = $3 "
                "WHERE workflow_id = $1 AND trigger_id = $2 AND version = $3",
                workflow_id,
                trigger_id,
                version,
            )
        return (rows[-1]["seq"] if rows else after), len(rows), done


async def run_signal_router(settings: Settings, *, batch: int = 512) -> None:
    """Run the signal router: signal ingest, its upkeep and the consumer, until shutdown."""
    async with ServiceHost("signal-router", settings) as host:
        topo = host.topology
        assert host.dead_letters is not None
        ingest = SignalIngest(
            host.pool,
            topo,
            wake_relay=host.wake_relay,
            relay_committed=host.relay_committed,
            batch=batch,
            origins=signal_origins(settings),
        )

        gate = None
        if settings.router_max_backlog:
            probe = BacklogProbe(host.js, topo, settings.partitions)
            host.add(probe)
            gate = FireGate(probe, settings.router_max_backlog, topo, lambda: ingest.trigger_table)

        async def on_signal(d: Delivery[bytes]) -> None:
            if gate is None:
                await ingest.submit(d)
                return
            async with gate.admit(d):
                await ingest.submit(d)

        consumer: ConsumerLoop[bytes] = ConsumerLoop(
            host.js,
            # Short ack wait: a killed router's deliveries come back soon (live ones are kept by heartbeats).
            ConsumerSpec(
                topo.signals_stream,
                topo.consumer_name("signal_router"),
                f"{topo.signal_prefix}>",
                ack_wait=10.0,
            ),
            RawPayload(),
            on_signal,
            dead_letters=host.dead_letters,
            batch=batch,
            max_in_flight=2 * batch,
            max_deliveries=settings.max_deliveries,
            span_name="signal_router ingest",
            deliver_twice=settings.test_deliver_twice,
        )
        # Stop order: the consumer stops fetching (stage 0), then ingest drains (stage 1), then the relay.
        for comp in (ingest, SignalUpkeep(host.pool, ingest), consumer):
            host.add(comp)
        await host.run()
