"""A work queue's two lanes under one consumer loop (``ConsumerLoop(bulk=...)``), against a real
nats-server: a lead message takes the next free slot ahead of the bulk lane's backlog; either lane
alone can use every slot; the loop never runs more than ``max_in_flight``; a message waiting in the
loop for a slot is kept alive, so JetStream does not hand it out again meanwhile."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest
from nats.aio.client import Client

from legato.bus import ConsumerLoop, Delivery, Topology, provision_streams
from legato.bus.publisher import OutgoingMessage, Publisher
from legato.bus.streams import ConsumerSpec
from legato.config.settings import Settings
from legato.store import PostgresDeadLetters, create_pool
from tests.integration.test_bus_store import DECODER, Ping
from tests.support.stack import now, until


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(settings.database_url, max_size=2)
    yield p
    await p.close()


class Recorder:
    """What the handler saw: the order messages started in, how many ran at once (at most), and each
    message's delivery count. Bulk messages (n >= 1000) run until ``release`` is set."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.deliveries: dict[int, list[int]] = {}
        self.running = 0
        self.most = 0
        self.release = asyncio.Event()

    async def handle(self, d: Delivery[Ping]) -> None:
        self.started.append(d.message.n)
        self.deliveries.setdefault(d.message.n, []).append(d.num_delivered)
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            if d.message.n >= 1000:
                await self.release.wait()
        finally:
            self.running -= 1


def lanes(
    nc: Client, topo: Topology, pool: asyncpg.Pool, rec: Recorder, slots: int, *, ack_wait: float = 30.0
) -> tuple[ConsumerLoop[Ping], str]:
    """A loop of ``slots`` over a new queue's two lanes, and the queue's name."""
    queue = f"q{uuid.uuid4().hex[:8]}"

    def spec(kind: str, subject: str) -> ConsumerSpec:
        return ConsumerSpec(
            stream=topo.work_stream,
            durable=topo.consumer_name(f"lanes_{queue}_{kind}"),
            filter_subject=subject,
            ack_wait=ack_wait,
        )

    loop = ConsumerLoop(
        nc.jetstream(),
        spec("lead", topo.work_subject(queue)),
        DECODER,
        rec.handle,
        dead_letters=PostgresDeadLetters(pool),
        batch=slots,
        max_in_flight=slots,
        bulk=spec("bulk", topo.work_bulk_subject(queue)),
        lead_ahead=1,
    )
    return loop, queue


async def send(nc: Client, subject: str, ns: list[int]) -> None:
    await Publisher(nc).publish_many(
        [OutgoingMessage(subject, msgspec.json.encode(Ping(n=n)), msg_id=uuid.uuid4().hex) for n in ns]
    )


async def test_a_lead_message_takes_the_next_free_slot_ahead_of_the_bulk_lanes_backlog(
    nc: Client, pool: asyncpg.Pool, topo: Topology
) -> None:
    await provision_streams(nc.jetstream(), topo)
    rec = Recorder()
    loop, queue = lanes(nc, topo, pool, rec, slots=2)
    task = asyncio.create_task(loop.run())
    try:
        await send(nc, topo.work_bulk_subject(queue), list(range(1000, 1010)))
        await until(now(lambda: rec.running == 2), 10.0, "both slots taken by the bulk lane")
        await send(nc, topo.work_subject(queue), [1])  # another workflow's step, behind 8 bulk messages
        await asyncio.sleep(0.5)  # delivered, it waits in the loop: no slot is free
        assert rec.started == [1000, 1001]
        rec.release.set()
        await until(now(lambda: len(rec.started) == 11), 10.0, "every message handled")
        # It ran in the first slot that came free, before the 8 bulk messages published before it.
        assert rec.started.index(1) == 2, rec.started
        assert rec.most == 2  # never more than the loop's slots, waiting message included
    finally:
        await loop.shutdown()
        await task


@pytest.mark.parametrize("lane", ["lead", "bulk"])
async def test_either_lane_alone_uses_every_slot(
    nc: Client, pool: asyncpg.Pool, topo: Topology, lane: str
) -> None:
    await provision_streams(nc.jetstream(), topo)
    rec = Recorder()
    loop, queue = lanes(nc, topo, pool, rec, slots=4)
    subject = topo.work_subject(queue) if lane == "lead" else topo.work_bulk_subject(queue)
    task = asyncio.create_task(loop.run())
    try:
        await send(nc, subject, list(range(1000, 1008)))
        await until(now(lambda: rec.running == 4), 10.0, "all 4 slots taken")
        await asyncio.sleep(0.3)
        assert rec.running == 4 and rec.most == 4
        rec.release.set()
        await until(now(lambda: len(rec.started) == 8), 10.0, "every message handled")
        assert sorted(rec.started) == list(range(1000, 1008))
        assert all(d == [1] for d in rec.deliveries.values()), rec.deliveries
    finally:
        await loop.shutdown()
        await task


async def test_a_message_waiting_in_the_loop_for_a_slot_is_not_handed_out_again(
    nc: Client, pool: asyncpg.Pool, topo: Topology
) -> None:
    """ack_wait 1.5 s; the one slot busy for 4 s; a lead message waits in the loop meanwhile: kept
    alive (in_progress), it is delivered once and runs once, when the slot frees."""
    await provision_streams(nc.jetstream(), topo)
    rec = Recorder()
    loop, queue = lanes(nc, topo, pool, rec, slots=1, ack_wait=1.5)
    task = asyncio.create_task(loop.run())
    try:
        await send(nc, topo.work_bulk_subject(queue), [1000])
        await until(now(lambda: rec.running == 1), 10.0, "the slot taken")
        await send(nc, topo.work_subject(queue), [1])
        await asyncio.sleep(4.0)  # well past ack_wait
        assert rec.started == [1000]
        rec.release.set()
        await until(now(lambda: len(rec.started) == 2), 10.0, "the waiting message handled")
        await asyncio.sleep(2.0)  # a redelivery would show now
        assert rec.started == [1000, 1], rec.started
        assert rec.deliveries == {1000: [1], 1: [1]}, rec.deliveries
    finally:
        await loop.shutdown()
        await task
