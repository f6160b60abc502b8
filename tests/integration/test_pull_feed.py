"""Standing pull requests (``legato.bus.pull.PullFeed``) under the consumer loop, against a real
nats-server: a trickle of messages costs a request per half batch, not one per message; what a feed
holds when it closes goes back at once; a restarted nats-server or a deleted consumer does not leave
the loop waiting on requests that are gone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest
from nats.aio.client import Client

from legato.bus import ConsumerLoop, Delivery, Topology, provision_consumer, provision_streams
from legato.bus.connection import connect, connect_with
from legato.bus.pull import PullFeed, pull_expires
from legato.config.settings import Settings
from legato.devstack import EmbeddedNats
from legato.store import PostgresDeadLetters, create_pool
from tests.integration.test_bus_store import DECODER, Ping, publish, spec_for
from tests.support.stack import now, until


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(settings.database_url, max_size=4)
    yield p
    await p.close()


def recording_loop(
    nc: Client, topo: Topology, pool: asyncpg.Pool, seen: list[int], ack_wait: float = 30.0
) -> ConsumerLoop[Ping]:
    async def handler(d: Delivery[Ping]) -> None:
        seen.append(d.message.n)

    return ConsumerLoop(
        nc.jetstream(),
        spec_for(topo, ack_wait=ack_wait),
        DECODER,
        handler,
        dead_letters=PostgresDeadLetters(pool),
    )


async def test_a_trickle_of_messages_costs_a_pull_request_per_half_batch(
    nc: Client, pool: asyncpg.Pool, topo: Topology
) -> None:
    await provision_streams(nc.jetstream(), topo)
    seen: list[int] = []
    loop = recording_loop(nc, topo, pool, seen)
    task = asyncio.create_task(loop.run())
    try:
        began = time.monotonic()
        for i in range(40):
            # One at a time, each handled before the next is published: a fetch per message would make
            # 40 requests (and a round trip before each message could come).
            await publish(nc, topo, [msgspec.json.encode(Ping(n=i))])
            await until(now(lambda i=i: len(seen) > i), 10.0, f"message {i} handled")
        took = time.monotonic() - began
        assert seen == list(range(40))
        # One standing request per expiry (2 s) carried them all: it is asked again when it expires.
        assert loop.pull_requests <= 1 + took // pull_expires(loop.spec.ack_wait), (loop.pull_requests, took)
    finally:
        await loop.shutdown()
        await task


async def test_a_feed_gives_back_at_once_what_it_holds_when_it_closes(nc: Client, topo: Topology) -> None:
    js = nc.jetstream()
    await provision_streams(js, topo)
    spec = spec_for(topo, ack_wait=30.0)
    await provision_consumer(js, spec)
    feed = PullFeed(js, spec.stream, spec.durable, batch=10, expires=20.0)
    await feed.open()
    assert await feed.take(10, wait=0.1) == []  # asks for 10
    await publish(nc, topo, [msgspec.json.encode(Ping(n=i)) for i in range(10)])
    await until(now(lambda: feed.held == 10), 10.0, "10 messages delivered to the feed")
    taken = await feed.take(2, wait=1.0)
    assert len(taken) == 2
    for msg in taken:
        await msg.ack()
    await feed.close()  # 8 delivered, never taken: naked, not left to ack_wait (30 s)

    again = PullFeed(js, spec.stream, spec.durable, batch=10, expires=20.0)
    await again.open()
    began = time.monotonic()
    back: list[int] = []
    try:
        while len(back) < 8 and time.monotonic() - began < 10.0:
            for msg in await again.take(10, wait=0.5):
                assert msg.metadata.num_delivered == 2
                back.append(DECODER.decode(msg.data).n)
                await msg.ack()
    finally:
        await again.close()
    first = {DECODER.decode(m.data).n for m in taken}
    assert sorted(back) == sorted(set(range(10)) - first)
    assert time.monotonic() - began < 10.0


@pytest.mark.parametrize("how", ["killed", "stopped"])
async def test_the_loop_carries_on_at_once_after_nats_restarts(
    how: str, own_nats: EmbeddedNats, settings: Settings, pool: asyncpg.Pool
) -> None:
    """Killed, the server takes its waiting requests with it without a word (the reconnect tells the
    feed); stopped, it answers them "409 Server Shutdown" first."""
    topo = Topology(settings.namespace, settings.partitions)
    nc = await connect(own_nats.url, name="legato-test")
    try:
        await provision_streams(nc.jetstream(), topo)
        seen: list[int] = []
        loop = recording_loop(nc, topo, pool, seen)
        task = asyncio.create_task(loop.run())
        try:
            await publish(nc, topo, [msgspec.json.encode(Ping(n=i)) for i in range(5)])
            await until(now(lambda: len(seen) == 5), 10.0, "5 messages before the restart")
            own_nats.kill() if how == "killed" else own_nats.stop()
            await asyncio.sleep(0.5)
            own_nats.start()
            await until(now(lambda: nc.is_connected), 15.0, "reconnected")
            began = time.monotonic()
            await publish(nc, topo, [msgspec.json.encode(Ping(n=i)) for i in range(5, 10)])
            # Well within the silence (2 heartbeats + 1 s = 11 s) after which a lost request would be
            # presumed lost anyway: the reconnect itself has the requests asked again.
            await until(now(lambda: len(seen) >= 10), 5.0, "5 messages after the restart")
            assert sorted(set(seen)) == list(range(10))
            assert time.monotonic() - began < 5.0
        finally:
            await loop.shutdown()
            await task
    finally:
        await nc.close()


async def test_a_deleted_consumer_is_put_back_and_the_loop_carries_on(
    nc: Client, pool: asyncpg.Pool, topo: Topology
) -> None:
    js = nc.jetstream()
    await provision_streams(js, topo)
    seen: list[int] = []
    loop = recording_loop(nc, topo, pool, seen)
    task = asyncio.create_task(loop.run())
    try:
        await publish(nc, topo, [msgspec.json.encode(Ping(n=1))])
        await until(now(lambda: seen == [1]), 10.0, "the first message")
        await js.delete_consumer(topo.events_stream, loop.spec.durable)  # its standing request goes too
        await publish(nc, topo, [msgspec.json.encode(Ping(n=2))])
        # Refused at once ("409 Consumer Deleted", then "503"): put back without waiting out a silence.
        await until(now(lambda: 2 in seen), 5.0, "a message after the consumer was deleted")
    finally:
        await loop.shutdown()
        await task


async def test_a_request_lost_without_a_word_is_asked_again_once_it_must_have_expired(
    nc: Client, topo: Topology
) -> None:
    """A consumer leader killed in a cluster takes the requests routed to it along, and nobody tells
    the feed (its connection, to another node, never dropped). Here the feed is made to believe it has
    a request standing that the server never got: only its own clock brings it messages."""
    js = nc.jetstream()
    await provision_streams(js, topo)
    spec = spec_for(topo, ack_wait=30.0)
    await provision_consumer(js, spec)
    feed = PullFeed(js, spec.stream, spec.durable, batch=4, expires=1.0)  # gone 2 s after it was made
    await feed.open()
    try:
        feed._asked = 4  # "standing", as far as the feed knows
        feed._asked_at = time.monotonic()
        await publish(nc, topo, [msgspec.json.encode(Ping(n=1))])
        began = time.monotonic()
        got = []
        while not got and time.monotonic() - began < 10.0:
            got = await feed.take(4, wait=0.2)
        assert [DECODER.decode(m.data).n for m in got] == [1]
        assert 2.0 <= time.monotonic() - began < 5.0  # not before it must have expired, and soon after
        assert feed.requests == 1
        await got[0].ack()
    finally:
        await feed.close()


async def test_a_frozen_loop_takes_a_message_once_and_a_live_one_then_applies_it(
    nc: Client, pool: asyncpg.Pool, topo: Topology, settings: Settings
) -> None:
    """A frozen process (SIGSTOP) keeps its standing requests at the server, which goes on delivering
    to them. Its requests expire within ack_wait, so what it took comes back after ack_wait to a live
    consumer, once: not delivered to the frozen one again and again until dead-lettered (a scheduler
    paused with 30 s requests had its replica's results dead-lettered "not settled after 5
    deliveries")."""
    js = nc.jetstream()
    await provision_streams(js, topo)
    spec = spec_for(topo, ack_wait=1.0)
    await provision_consumer(js, spec)
    # The frozen one: a feed with a request standing, never read again (as a process that stopped).
    frozen_nc = await connect_with(settings, name="legato-test-frozen")
    frozen = PullFeed(
        js=frozen_nc.jetstream(),
        stream=spec.stream,
        durable=spec.durable,
        batch=8,
        expires=pull_expires(spec.ack_wait),
    )
    await frozen.open()
    await frozen.take(8, wait=0.05)
    seen: list[tuple[int, int]] = []

    async def handler(d: Delivery[Ping]) -> None:
        seen.append((d.message.n, d.num_delivered))

    live = ConsumerLoop(js, spec, DECODER, handler, dead_letters=PostgresDeadLetters(pool), max_deliveries=3)
    try:
        await publish(nc, topo, [msgspec.json.encode(Ping(n=i)) for i in range(4)])
        await until(now(lambda: frozen.held > 0), 5.0, "the frozen feed took messages")
        task = asyncio.create_task(live.run())
        try:
            await until(
                now(lambda: len({n for n, _ in seen}) == 4), 15.0, "every message applied by the live loop"
            )
            await asyncio.sleep(3 * spec.ack_wait)  # no more deliveries meanwhile
        finally:
            await live.shutdown()
            await task
        assert sorted(n for n, _ in seen) == [0, 1, 2, 3]  # each once
        assert max(d for _, d in seen) <= 2  # at most one delivery went to the frozen feed
        assert live.stats.dead_lettered == 0
    finally:
        await frozen_nc.close()


def test_requests_live_within_ack_wait_and_at_most_2_s() -> None:
    assert pull_expires(1.0) == pytest.approx(0.8)  # expired before a first redelivery
    assert pull_expires(5.0) == 2.0  # the scheduler's: a frozen one takes messages for 2 s at most
    assert pull_expires(30.0) == 2.0  # the executor's: not 24 s of work items hoarded by a frozen one
