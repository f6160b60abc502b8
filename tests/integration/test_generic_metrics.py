"""The generic instruments against a real NATS and Postgres: the consumer loop's handled/redelivered/
dead-lettered counts and the outbox relay's published count and lag."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import msgspec
import pytest
from nats.aio.client import Client
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from legato.bus import (
    ConsumerLoop,
    ConsumerSpec,
    Delivery,
    OutgoingMessage,
    Publisher,
    Topology,
    provision_streams,
)
from legato.bus.consumer import Retry
from legato.config.settings import Settings
from legato.store import OutboxRelay, PostgresDeadLetters, add_to_outbox, create_pool
from legato.telemetry import configure_metrics, shutdown_metrics


class Ping(msgspec.Struct, frozen=True):
    n: int


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    r = InMemoryMetricReader()
    configure_metrics("test", readers=[r])
    yield r
    shutdown_metrics()


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(settings.database_url, max_size=4)
    yield p
    await p.close()


def values(reader: InMemoryMetricReader) -> dict[tuple[str, tuple[tuple[str, object], ...]], float]:
    data = reader.get_metrics_data()
    out: dict[tuple[str, tuple[tuple[str, object], ...]], float] = {}
    if data is None:
        return out
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                for p in m.data.data_points:
                    out[(m.name, tuple(sorted((p.attributes or {}).items())))] = p.value  # type: ignore[union-attr]
    return out


async def test_consumer_loop_counts_every_outcome(
    nc: Client, pool: asyncpg.Pool, settings: Settings, reader: InMemoryMetricReader
) -> None:
    topo = Topology(settings.namespace, settings.partitions)
    await provision_streams(nc.jetstream(), topo)
    payloads = [msgspec.json.encode(Ping(n=i)) for i in range(5)] + [b"garbage"]
    await Publisher(nc).publish_many(
        [OutgoingMessage(topo.event_subject("wf"), p, msg_id=uuid.uuid4().hex) for p in payloads]
    )
    retried: set[int] = set()

    async def handler(d: Delivery[Ping]) -> None:
        if d.message.n == 1 and 1 not in retried:
            retried.add(1)
            raise Retry(0.05, "not yet")
        if d.message.n == 2:
            raise ValueError("always fails")

    loop: ConsumerLoop[Ping] = ConsumerLoop(
        nc.jetstream(),
        ConsumerSpec(topo.events_stream, topo.consumer_name("metrics"), f"{topo.subject_prefix('event')}>"),
        msgspec.json.Decoder(Ping),
        handler,
        dead_letters=PostgresDeadLetters(pool),
        max_deliveries=2,
        retry_delays=(0.05,),
    )
    task = asyncio.create_task(loop.run())
    try:
        async with asyncio.timeout(20):
            while loop.stats.acked < 4 or loop.stats.dead_lettered < 2:
                await asyncio.sleep(0.05)
    finally:
        await loop.shutdown()
        await task
    stream = (("stream", "LEGATO_EVENTS"),)
    got = values(reader)

    def handled(result: str) -> float:
        return got.get(("legato.consumer.handled", tuple(sorted([*stream, ("result", result)]))), 0)

    assert handled("acked") == 4  # n = 0, 1 (after its retry), 3, 4
    assert handled("retried") == 1
    assert handled("failed") == 1  # n = 2, first delivery
    assert handled("dead_lettered") == 2  # n = 2 on its last delivery, and the garbage
    assert got[("legato.consumer.redeliveries", stream)] == 2  # n = 1 and n = 2 came back once each
    assert got[("legato.consumer.dead_letters", stream)] == 2


async def test_outbox_relay_reports_published_rows_and_lag(
    nc: Client, pool: asyncpg.Pool, settings: Settings, reader: InMemoryMetricReader
) -> None:
    topo = Topology(settings.namespace, settings.partitions)
    await provision_streams(nc.jetstream(), topo)
    async with pool.acquire() as conn, conn.transaction():
        await add_to_outbox(conn, [OutgoingMessage(topo.event_subject("wf"), b"{}") for _ in range(7)])
        # Rows a crashed process left behind half a minute ago.
        await conn.execute("UPDATE outbox SET created_at = now() - interval '30 seconds'")
    relay = OutboxRelay(pool, Publisher(nc), batch=5)
    assert await relay.relay_once() == 5
    got = values(reader)
    assert got[("legato.outbox.published", ())] == 5
    assert 30 <= got[("legato.outbox.lag", ())] < 60
    assert await relay.relay_once() == 2
    assert await relay.relay_once() == 0
    got = values(reader)
    assert got[("legato.outbox.published", ())] == 7
    assert got[("legato.outbox.lag", ())] == 0
