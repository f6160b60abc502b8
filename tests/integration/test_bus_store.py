"""The foundation against a real nats-server and a real PostgreSQL: ack-after-commit, outbox relay,
dead letters, migrations under concurrency, graceful shutdown."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence

import asyncpg
import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from legato.bus import (
    ConsumerLoop,
    ConsumerSpec,
    Delivery,
    OutgoingMessage,
    Poison,
    Publisher,
    PublishError,
    Retry,
    Topology,
    provision_streams,
)
from legato.bus.streams import keep_work_queues_open, provision_consumer
from legato.config.settings import Settings
from legato.store import (
    OutboxRelay,
    PostgresDeadLetters,
    add_to_outbox,
    create_pool,
    mark_applied,
    migrate_url,
)
from legato.store.migrations import load_migrations, migrate
from legato.store.outbox import (
    DELETE_PUBLISHED,
    RELEASE_EVENTS,
    TAKE_EVENTS,
    EventOutboxRelay,
    add_events,
)
from tests.support.stack import until


class Ping(msgspec.Struct, frozen=True):
    n: int
    v: int = 1


DECODER = msgspec.json.Decoder(Ping)


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(settings.database_url, max_size=8)
    async with p.acquire() as conn:
        await conn.execute("CREATE TABLE effect (n integer NOT NULL, msg_id text NOT NULL)")
    yield p
    await p.close()


async def test_publish_rejections_timeouts_and_late_acks(nc: Client, topo: Topology) -> None:
    """PubAcks come back to one reply subscription per publisher: a rejection fails at once, naming
    the subject; a publish nobody acks is sent again under its id and then fails; an ack that comes
    after its round gave up is dropped, and nothing is left waiting."""
    await provision_streams(nc.jetstream(), topo)
    pub = Publisher(nc, timeout=0.3, attempts=2)
    wrong_stream = OutgoingMessage(
        topo.event_subject("wf"), b"{}", msg_id="rejected-1", headers={"Nats-Expected-Stream": "NOT_IT"}
    )
    started = time.monotonic()
    with pytest.raises(PublishError, match=r"rejected: .*expected stream"):
        await pub.publish(wrong_stream)
    assert time.monotonic() - started < 0.3  # not a timeout: JetStream answered
    # A "stream" that answers late: its acks come after the round stopped waiting.
    seen: list[str] = []

    async def slow_stream(msg: Msg) -> None:
        seen.append(msg.headers["Nats-Msg-Id"] if msg.headers else "")
        await asyncio.sleep(0.5)
        await nc.publish(msg.reply, b'{"stream": "SLOW", "seq": 1}')

    sub = await nc.subscribe("slowstream.subject", cb=slow_stream)
    try:
        with pytest.raises(PublishError, match=r"1 of 1 publishes not acknowledged after 2 attempts"):
            await pub.publish(OutgoingMessage("slowstream.subject", b"{}", msg_id="late-1"))
        assert seen == ["late-1", "late-1"]  # sent again under the same id
        await asyncio.sleep(1.2)  # both late acks arrived, and were dropped
        assert pub.acks.waiting == 0
        ack = await Publisher(nc, timeout=2.0).publish(OutgoingMessage("slowstream.subject", b"{}"))
        assert ack is not None and (ack.stream, ack.seq, ack.duplicate) == ("SLOW", 1, False)
    finally:
        await sub.unsubscribe()
    # The publisher still works after all that.
    ok = await pub.publish(OutgoingMessage(topo.event_subject("wf"), b"{}", msg_id="after-1"))
    assert ok is not None and ok.stream == topo.events_stream and pub.acks.waiting == 0


def spec_for(topo: Topology, name: str = "testc", ack_wait: float = 2.0) -> ConsumerSpec:
    return ConsumerSpec(
        stream=topo.events_stream,
        durable=topo.consumer_name(name),
        filter_subject=f"{topo.subject_prefix('event')}>",
        ack_wait=ack_wait,
    )


async def publish(nc: Client, topo: Topology, payloads: list[bytes]) -> None:
    pub = Publisher(nc)
    await pub.publish_many(
        [OutgoingMessage(topo.event_subject("wf"), p, msg_id=uuid.uuid4().hex) for p in payloads]
    )


async def run_until(loop: ConsumerLoop[Ping], cond: object, timeout: float = 20.0) -> None:
    task = asyncio.create_task(loop.run())
    try:
        async with asyncio.timeout(timeout):
            while not await cond():  # type: ignore[operator]
                await asyncio.sleep(0.05)
    finally:
        await loop.shutdown()
        await task


async def count(pool: asyncpg.Pool, sql: str) -> int:
    async with pool.acquire() as conn:
        return int(await conn.fetchval(sql))


async def test_handler_dying_mid_way_is_redelivered_and_applied_once(
    nc: Client, pool: asyncpg.Pool, topo: Topology
) -> None:
    await provision_streams(nc.jetstream(), topo)
    await publish(nc, topo, [msgspec.json.encode(Ping(n=i)) for i in range(20)])
    crashes: dict[str, int] = {}

    async def handler(d: Delivery[Ping]) -> None:
        async with pool.acquire() as conn:
            async with conn.transaction():
                if not await mark_applied(conn, "test", d.msg_id):
                    return
                await conn.execute("INSERT INTO effect VALUES ($1, $2)", d.message.n, d.msg_id)
                if d.message.n % 3 == 0 and crashes.get(d.msg_id, 0) == 0:
                    crashes[d.msg_id] = 1
                    raise RuntimeError("died before commit")  # rolled back, then nak
            if d.message.n % 4 == 1 and crashes.get(d.msg_id, 0) == 0:
                crashes[d.msg_id] = 2
                # Committed, but "dies" before the ack: never settled, JetStream redelivers after ack_wait.
                raise asyncio.CancelledError()

    loop = ConsumerLoop(
        nc.jetstream(),
        spec_for(topo),
        DECODER,
        handler,
        dead_letters=PostgresDeadLetters(pool),
        retry_delays=(0.1,),
    )

    async def done() -> bool:
        return (
            await count(pool, "SELECT count(*) FROM effect") >= 20
            and all(v for v in crashes.values())
            and loop.stats.acked >= 20
        )

    await run_until(loop, done)
    rows = await count(pool, "SELECT count(*) FROM effect")
    distinct = await count(pool, "SELECT count(DISTINCT n) FROM effect")
    assert rows == 20 and distinct == 20
    assert sum(1 for v in crashes.values() if v == 1) == 7  # n = 0,3,...,18 died before commit
    assert sum(1 for v in crashes.values() if v == 2) == 4  # n = 1,5,13,17 lost their ack (9 died earlier)
    assert loop.stats.redelivered == 11


async def test_poison_and_failing_messages_reach_dead_letter_without_blocking(
    nc: Client, pool: asyncpg.Pool, topo: Topology
) -> None:
    await provision_streams(nc.jetstream(), topo)
    payloads = [msgspec.json.encode(Ping(n=i)) for i in range(10)]
    payloads.insert(3, b"not json at all")
    payloads.insert(6, b'{"kind": "unknown", "x": 1}')
    payloads.insert(8, msgspec.json.encode(Ping(n=666)))
    await publish(nc, topo, payloads)
    seen: list[int] = []

    async def handler(d: Delivery[Ping]) -> None:
        if d.message.n == 666:
            raise ValueError("this one always fails")
        if d.message.n == 7:
            raise Poison("declared poison by the handler")
        seen.append(d.message.n)

    loop = ConsumerLoop(
        nc.jetstream(),
        spec_for(topo),
        DECODER,
        handler,
        dead_letters=PostgresDeadLetters(pool),
        max_deliveries=3,
        retry_delays=(0.05,),
    )

    async def done() -> bool:
        return await count(pool, "SELECT count(*) FROM dead_letter") >= 4

    await run_until(loop, done)
    assert sorted(seen) == [0, 1, 2, 3, 4, 5, 6, 8, 9]
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT payload, error, deliveries, headers FROM dead_letter ORDER BY stream_seq"
        )
    by_payload = {bytes(r["payload"]): r for r in rows}
    assert b"not json at all" in by_payload
    assert "undecodable" in by_payload[b"not json at all"]["error"]
    assert "undecodable" in by_payload[b'{"kind": "unknown", "x": 1}']["error"]
    failing = by_payload[msgspec.json.encode(Ping(n=666))]
    assert failing["deliveries"] == 3 and "this one always fails" in failing["error"]
    assert "Nats-Msg-Id" in failing["headers"]
    assert "declared poison" in by_payload[msgspec.json.encode(Ping(n=7))]["error"]
    await until(lambda: all_settled(nc, topo), 5.0, "every message settled at the server")


async def test_retries_for_ownership_never_count_toward_the_dead_letter_limit(
    nc: Client, pool: asyncpg.Pool, topo: Topology
) -> None:
    """A handler that answers Retry (lease moved, owner busy) many more times than ``max_deliveries``
    gets its message applied in the end, not dead-lettered; real failures still count."""
    await provision_streams(nc.jetstream(), topo)
    await publish(nc, topo, [msgspec.json.encode(Ping(n=1)), msgspec.json.encode(Ping(n=2))])
    calls: dict[int, int] = {1: 0, 2: 0}
    applied: list[int] = []

    async def handler(d: Delivery[Ping]) -> None:
        n = d.message.n
        calls[n] += 1
        if calls[n] <= 8:
            raise Retry(0.01, "partition not owned here (yet)")
        if n == 2:
            raise ValueError("a real failure")
        applied.append(n)

    loop = ConsumerLoop(
        nc.jetstream(),
        spec_for(topo, "retryc"),
        DECODER,
        handler,
        dead_letters=PostgresDeadLetters(pool),
        max_deliveries=3,
        retry_delays=(0.05,),
    )

    async def done() -> bool:
        return bool(applied) and await count(pool, "SELECT count(*) FROM dead_letter") >= 1

    await run_until(loop, done)
    assert applied == [1]
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT payload, error FROM dead_letter")
    assert [bytes(r["payload"]) for r in rows] == [msgspec.json.encode(Ping(n=2))]
    assert "a real failure" in rows[0]["error"]
    assert calls[2] == 8 + 3  # eight ownership retries, then three counted failures
    assert loop.stats.dead_lettered == 1


class CrashAfterPublish(Publisher):
    """Publishes for real, then fails before the relay can delete the rows (a crash in between)."""

    crashes_left = 2

    async def publish_many(self, msgs):  # type: ignore[no-untyped-def]
        acks = await super().publish_many(msgs)
        if self.crashes_left > 0:
            self.crashes_left -= 1
            raise ConnectionResetError("relay died after publish, before delete")
        return acks


async def test_outbox_relay_is_exactly_once_across_a_crash(
    nc: Client, pool: asyncpg.Pool, topo: Topology
) -> None:
    await provision_streams(nc.jetstream(), topo)
    n = 1200
    async with pool.acquire() as conn, conn.transaction():
        await add_to_outbox(
            conn,
            [OutgoingMessage(topo.event_subject("wf"), msgspec.json.encode(Ping(n=i))) for i in range(n)],
        )
    # A transaction that rolls back leaves nothing to relay.
    with pytest.raises(RuntimeError):
        async with pool.acquire() as conn, conn.transaction():
            await add_to_outbox(conn, [OutgoingMessage(topo.event_subject("wf"), b"{}")])
            raise RuntimeError("rolled back")

    crashing = OutboxRelay(pool, CrashAfterPublish(nc), batch=500)
    with pytest.raises(ConnectionResetError):
        await crashing.relay_once()
    assert await count(pool, "SELECT count(*) FROM outbox") == n  # nothing deleted: the "crash"
    relay = OutboxRelay(pool, Publisher(nc), batch=500)
    while await relay.relay_once():
        pass
    assert await count(pool, "SELECT count(*) FROM outbox") == 0
    info = await nc.jetstream().stream_info(topo.events_stream)
    assert info.state.messages == n  # the 500 republished ones were dropped as duplicates
    assert relay.publisher.duplicates == 500


async def test_outbox_relay_component_wakes_and_flushes(
    nc: Client, pool: asyncpg.Pool, topo: Topology
) -> None:
    await provision_streams(nc.jetstream(), topo)
    relay = OutboxRelay(pool, Publisher(nc), poll_interval=30.0)
    task = asyncio.create_task(relay.run())
    try:
        async with pool.acquire() as conn, conn.transaction():
            await add_to_outbox(conn, [OutgoingMessage(topo.event_subject("wf"), b"{}", msg_id="m1")])
        relay.wake()
        async with asyncio.timeout(5):
            while relay.published < 1:
                await asyncio.sleep(0.02)
    finally:
        await relay.shutdown()
        await task
    assert (await nc.jetstream().stream_info(topo.events_stream)).state.messages == 1


class CountingRelay(OutboxRelay):
    calls = 0  # reads of the table begun
    done = 0  # and ended

    async def relay_once(self, min_age: float = 0.0) -> int:
        self.calls += 1
        try:
            return await super().relay_once(min_age)
        finally:
            self.done += 1

    async def started(self) -> int:
        """Once the start's round (a read of the table) is done: how many reads so far."""
        async with asyncio.timeout(5):
            while self.done < 1:
                await asyncio.sleep(0.02)
        return self.calls


async def test_outbox_relay_takes_no_empty_round_after_a_partial_batch(
    nc: Client, pool: asyncpg.Pool, topo: Topology
) -> None:
    """A round that took fewer rows than its batch took every row there was; what commits later is
    relayed on the next wake (this process) or poll (another process), not by an extra empty round."""
    await provision_streams(nc.jetstream(), topo)
    relay = CountingRelay(pool, Publisher(nc), batch=10, poll_interval=30.0)
    task = asyncio.create_task(relay.run())

    async def commit(count: int, prefix: str) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await add_to_outbox(
                conn,
                [
                    OutgoingMessage(topo.event_subject("wf"), b"{}", msg_id=f"{prefix}{i}")
                    for i in range(count)
                ],
            )

    async def published(total: int) -> None:
        async with asyncio.timeout(5):
            while relay.published < total:
                await asyncio.sleep(0.02)

    try:
        start = await relay.started()
        await commit(3, "a")
        relay.wake()
        await published(3)
        await asyncio.sleep(0.2)
        assert relay.calls == start + 1  # 3 < 10 rows: one round, no empty one after it
        await commit(12, "b")  # more than a batch: full rounds go on until one is partial
        relay.wake()
        await published(15)
        await asyncio.sleep(0.2)
        assert relay.calls == start + 3  # 10, then 2
    finally:
        await relay.shutdown()
        await task
    assert (await nc.jetstream().stream_info(topo.events_stream)).state.messages == 15
    assert await count(pool, "SELECT count(*) FROM outbox") == 0


async def commit_rows(pool: asyncpg.Pool, msgs: list[OutgoingMessage]) -> list[tuple[int, OutgoingMessage]]:
    async with pool.acquire() as conn, conn.transaction():
        return await add_to_outbox(conn, msgs)


async def test_published_rows_are_deleted_without_waiting_for_the_wal_flush(
    pool: asyncpg.Pool, topo: Topology
) -> None:
    """The relay's delete of published rows is the one outbox write a Postgres crash may undo (the rows
    are then published again under their message ids, and dropped as copies): it commits without
    waiting for the WAL flush, for its own transaction only, so the pooled connection's next
    transaction (a start, a scheduler batch) stays durable."""
    rows = await commit_rows(pool, [OutgoingMessage(topo.event_subject("wf"), b"{}") for _ in range(3)])
    async with pool.acquire() as conn:
        await conn.execute(
            "SET synchronous_commit = on"
        )  # as in production (the tests' server is not durable)
        async with conn.transaction():
            await conn.execute(DELETE_PUBLISHED, [rows[0][0]])
            assert await conn.fetchval("SELECT current_setting('synchronous_commit')") == "off"
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
        await conn.execute(DELETE_PUBLISHED, [rows[1][0]])  # a statement of its own: the same
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
        left = await conn.fetchval(
            "SELECT array_agg(id) FROM outbox WHERE id = ANY($1::bigint[])", [r[0] for r in rows]
        )
        assert left == [rows[2][0]]


async def all_settled(nc: Client, topo: Topology) -> bool:
    """The test consumer has nothing pending or unacked (JetStream applies acks asynchronously: an
    ack published before a consumer-info request can be counted after it answers)."""
    info = await nc.jetstream().consumer_info(topo.events_stream, topo.consumer_name("testc"))
    return info.num_ack_pending == 0 and info.num_pending == 0


async def until_published(relay: OutboxRelay, total: int, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while relay.published < total:
            await asyncio.sleep(0.02)


async def test_committed_rows_are_published_from_memory_then_deleted(
    nc: Client, pool: asyncpg.Pool, topo: Topology
) -> None:
    """Rows handed over after their commit are published without reading the outbox, under the message
    id the table would give them (ob.<database>.<row id>), and deleted; handing them over again
    publishes copies that JetStream drops."""
    await provision_streams(nc.jetstream(), topo)
    relay = CountingRelay(pool, Publisher(nc), batch=10, poll_interval=30.0)
    task = asyncio.create_task(relay.run())
    try:
        reads = await relay.started()
        rows = await commit_rows(
            pool,
            [OutgoingMessage(topo.event_subject("wf"), msgspec.json.encode(Ping(n=i))) for i in range(25)],
        )
        assert [m.payload for _, m in rows] == [msgspec.json.encode(Ping(n=i)) for i in range(25)]
        relay.committed(rows)
        await until_published(relay, 25)
        assert relay.calls == reads  # not one read of the table
        async with asyncio.timeout(5):
            while await count(pool, "SELECT count(*) FROM outbox"):
                await asyncio.sleep(0.02)
        js = nc.jetstream()
        assert (await js.stream_info(topo.events_stream)).state.messages == 25
        first = await js.get_msg(topo.events_stream, seq=1)
        assert first.headers is not None
        assert first.headers["Nats-Msg-Id"] == f"ob.{relay._db_token}.{rows[0][0]}"
        assert DECODER.decode(first.data).n == 0  # in the order committed
        relay.committed(rows)
        await until_published(relay, 50)
        assert relay.publisher.duplicates == 25
        assert (await js.stream_info(topo.events_stream)).state.messages == 25
    finally:
        await relay.shutdown()
        await task


class PurgeCountingRelay(CountingRelay):
    """Records the ids of each delete of published rows."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.purges: list[int] = []

    async def purge_published(self) -> None:
        if self._unpurged:
            self.purges.append(len(self._unpurged))
        await super().purge_published()


async def test_rows_published_in_several_rounds_are_deleted_in_one_statement(
    nc: Client, pool: asyncpg.Pool, topo: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below saturation a relay publishes a round per commit; the rows of the rounds published within
    DELETE_LINGER are deleted together, and what is still to delete at shutdown is deleted then."""
    import legato.store.outbox as outbox

    monkeypatch.setattr(outbox, "DELETE_LINGER", 30.0)  # only the shutdown deletes, here
    await provision_streams(nc.jetstream(), topo)
    relay = PurgeCountingRelay(pool, Publisher(nc), batch=100, poll_interval=30.0)
    task = asyncio.create_task(relay.run())
    try:
        await relay.started()
        for r in range(5):
            rows = await commit_rows(
                pool, [OutgoingMessage(topo.event_subject("wf"), b"{}", msg_id=f"p{r}.{i}") for i in range(3)]
            )
            relay.committed(rows)
            await until_published(relay, 3 * (r + 1))  # a round of its own
        assert relay.rounds == 5
        assert await count(pool, "SELECT count(*) FROM outbox") == 15
        assert relay.purges == []
    finally:
        await relay.shutdown()
        await task
    assert relay.purges == [15]
    assert await count(pool, "SELECT count(*) FROM outbox") == 0
    assert (await nc.jetstream().stream_info(topo.events_stream)).state.messages == 15


async def test_a_sweep_deletes_published_rows_before_it_reads_the_table(
    nc: Client, pool: asyncpg.Pool, topo: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows published and not deleted yet are deleted before a sweep reads the table (``wake()``): the
    sweep must not find them and publish them again."""
    import legato.store.outbox as outbox

    monkeypatch.setattr(outbox, "DELETE_LINGER", 30.0)
    await provision_streams(nc.jetstream(), topo)
    relay = PurgeCountingRelay(pool, Publisher(nc), poll_interval=30.0)
    task = asyncio.create_task(relay.run())
    try:
        reads = await relay.started()
        relay.committed(
            await commit_rows(
                pool, [OutgoingMessage(topo.event_subject("wf"), b"{}", msg_id=f"s{i}") for i in range(4)]
            )
        )
        await until_published(relay, 4)
        relay.wake()
        async with asyncio.timeout(5):
            while relay.calls == reads:
                await asyncio.sleep(0.02)
        assert relay.purges == [4]
        assert await count(pool, "SELECT count(*) FROM outbox") == 0
    finally:
        await relay.shutdown()
        await task
    assert relay.published == 4  # neither the sweep nor the shutdown's round found a row to publish
    assert relay.publisher.duplicates == 0


class FailsOnce(Publisher):
    failures_left = 1

    async def publish_many(self, msgs):  # type: ignore[no-untyped-def]
        if self.failures_left > 0:
            self.failures_left -= 1
            raise ConnectionResetError("NATS went away")
        return await super().publish_many(msgs)


async def test_handed_rows_whose_publish_fails_are_published_from_the_table(
    nc: Client, pool: asyncpg.Pool, topo: Topology
) -> None:
    await provision_streams(nc.jetstream(), topo)
    relay = OutboxRelay(pool, FailsOnce(nc), poll_interval=30.0)
    task = asyncio.create_task(relay.run())
    try:
        rows = await commit_rows(
            pool, [OutgoingMessage(topo.event_subject("wf"), b"{}", msg_id=f"f{i}") for i in range(7)]
        )
        relay.committed(rows)
        await until_published(relay, 7)  # after the failure, by reading the table at once (no poll)
    finally:
        await relay.shutdown()
        await task
    assert (await nc.jetstream().stream_info(topo.events_stream)).state.messages == 7
    assert await count(pool, "SELECT count(*) FROM outbox") == 0


async def test_a_poll_leaves_young_rows_to_their_committer_and_takes_them_when_old(
    nc: Client, pool: asyncpg.Pool, topo: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows a process committed and never handed over (it died after its commit) are published by any
    relay's poll once older than the grace; before that they are left to the process that wrote them."""
    import legato.store.outbox as outbox

    monkeypatch.setattr(outbox, "HANDOFF_GRACE", 1.0)
    await provision_streams(nc.jetstream(), topo)
    other = OutboxRelay(pool, Publisher(nc), poll_interval=0.1)
    task = asyncio.create_task(other.run())
    try:
        await asyncio.sleep(0.3)  # its start's round is done
        t0 = asyncio.get_running_loop().time()
        await commit_rows(
            pool, [OutgoingMessage(topo.event_subject("wf"), b"{}", msg_id=f"o{i}") for i in range(3)]
        )
        await asyncio.sleep(0.5)
        assert other.published == 0  # young: its committer's
        await until_published(other, 3)
        assert asyncio.get_running_loop().time() - t0 >= 1.0
    finally:
        await other.shutdown()
        await task
    assert (await nc.jetstream().stream_info(topo.events_stream)).state.messages == 3


class CountingEventRelay(EventOutboxRelay):
    calls = 0
    done = 0
    # While set and not yet released, a read holds on after publishing (a slow round under load).
    hold: asyncio.Event | None = None

    async def relay_once(self, min_age: float = 0.0) -> int:
        self.calls += 1
        try:
            n = await super().relay_once(min_age)
            if self.hold is not None:
                await self.hold.wait()
            return n
        finally:
            self.done += 1

    started = CountingRelay.started


async def commit_events(pool: asyncpg.Pool, msgs: list[OutgoingMessage]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await add_events(conn, msgs)


def pings(topo: Topology, first: int, n: int, prefix: str = "ord") -> list[OutgoingMessage]:
    return [
        OutgoingMessage(topo.event_subject("wf"), msgspec.json.encode(Ping(n=i)), msg_id=f"{prefix}-{i}")
        for i in range(first, first + n)
    ]


async def stored_order(nc: Client, stream: str) -> list[int]:
    js = nc.jetstream()
    count = (await js.stream_info(stream)).state.messages
    return [DECODER.decode((await js.get_msg(stream, seq)).data or b"").n for seq in range(1, count + 1)]


async def test_the_event_relay_publishes_a_rows_events_in_order_once_each_and_deletes_the_row(
    nc: Client, pool: asyncpg.Pool, topo: Topology
) -> None:
    """One transaction's lifecycle events are one ``event_outbox`` row; ``wake()`` (what the scheduler
    calls once its batch committed) relays it at once, not after the poll: every event is its own
    message under its own id, in the order written, and the row is gone. Handed-over ``outbox`` rows
    are not its business."""
    await provision_streams(nc.jetstream(), topo)
    relay = CountingEventRelay(pool, Publisher(nc), poll_interval=30.0, ordered_lock=4242)
    task = asyncio.create_task(relay.run())
    try:
        reads = await relay.started()
        await commit_events(pool, pings(topo, 0, 5))
        relay.committed([(1, pings(topo, 99, 1)[0])])
        assert not relay._handed and not relay._wake.is_set()
        relay.wake()
        await until_published(relay, 5)
        assert relay.calls == reads + 1
    finally:
        await relay.shutdown()
        await task
    assert await stored_order(nc, topo.events_stream) == [0, 1, 2, 3, 4]
    assert await count(pool, "SELECT count(*) FROM event_outbox") == 0


async def test_an_event_row_whose_publish_failed_is_published_again_under_the_same_ids(
    nc: Client, pool: asyncpg.Pool, topo: Topology
) -> None:
    """A round whose publish fails (here: no stream yet, so no PubAck) keeps its rows, and a later
    round publishes them; events that did reach the stream before the failure are dropped as copies
    by their message ids, so the stream holds each event once."""
    relay = EventOutboxRelay(
        pool, Publisher(nc, timeout=0.3, attempts=1), poll_interval=0.1, ordered_lock=4646
    )
    await commit_events(pool, pings(topo, 0, 3, "again"))
    with pytest.raises(PublishError):
        await relay.relay_once()
    assert await count(pool, "SELECT count(*) FROM event_outbox") == 1
    await provision_streams(nc.jetstream(), topo)
    # One of them reached the stream already (as if the PubAck of a stored event was lost).
    await Publisher(nc).publish(pings(topo, 1, 1, "again")[0])
    assert await relay.relay_once() == 1
    assert await count(pool, "SELECT count(*) FROM event_outbox") == 0
    assert await stored_order(nc, topo.events_stream) == [1, 0, 2]


async def test_an_event_needs_a_message_id_and_no_headers(pool: asyncpg.Pool, topo: Topology) -> None:
    """Without its id a republished event could not be dropped as a copy: refused before anything is
    written, naming the subject."""
    with pytest.raises(ValueError, match=r"event on .*needs a message id"):
        await commit_events(pool, [OutgoingMessage(topo.event_subject("wf"), b"{}")])
    with pytest.raises(ValueError, match="no headers"):
        await commit_events(
            pool, [OutgoingMessage(topo.event_subject("wf"), b"{}", msg_id="h", headers={"a": "b"})]
        )
    assert await count(pool, "SELECT count(*) FROM event_outbox") == 0


async def test_event_relays_publish_every_event_once_in_the_order_it_was_written(
    nc: Client, pool: asyncpg.Pool, topo: Topology
) -> None:
    """Two relays sharing an ordered lock (two scheduler replicas) drain rows committed while they run,
    in small rounds, both woken by every commit: the stream holds every event once, in the order written,
    and every round left the table (a round's delete commits only after its PubAcks)."""
    await provision_streams(nc.jetstream(), topo)
    relays = [
        EventOutboxRelay(pool, Publisher(nc), batch=3, poll_interval=0.05, ordered_lock=4343)
        for _ in range(2)
    ]
    tasks = [asyncio.create_task(r.run()) for r in relays]
    n = 0
    try:
        for _ in range(60):
            await commit_events(pool, pings(topo, n, 5))
            n += 5
            for relay in relays:
                relay.wake()
        async with asyncio.timeout(20):
            while sum(r.published for r in relays) < n:
                await asyncio.sleep(0.02)
    finally:
        for relay in relays:
            await relay.shutdown()
        await asyncio.gather(*tasks)
    assert sum(r.published for r in relays) == n
    assert await count(pool, "SELECT count(*) FROM event_outbox") == 0
    assert await stored_order(nc, topo.events_stream) == list(range(n))


ADVISORY_LOCKS = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1"


async def advisory_locks(pool: asyncpg.Pool, key: int) -> int:
    async with pool.acquire() as conn:
        return int(await conn.fetchval(ADVISORY_LOCKS, key))


async def lock_held(pool: asyncpg.Pool, key: int) -> bool:
    return await advisory_locks(pool, key) == 1


async def lock_free(pool: asyncpg.Pool, key: int) -> bool:
    return await advisory_locks(pool, key) == 0


async def test_an_event_take_waits_for_the_previous_release_to_commit_and_skips_its_rows(
    pool: asyncpg.Pool, topo: Topology
) -> None:
    """The relays' round is a take and a release (migration 0100). The release gives the lock back
    before its delete commits: the next take gets the lock, waits for the deleted rows' locks, and then
    reads only the rows after them, so no event is published twice and none out of order. Here the
    release is held open in a transaction block to widen that window."""
    key = 4747
    for n in range(3):
        await commit_events(pool, pings(topo, n, 1, "take"))
    async with pool.acquire() as first, pool.acquire() as second:
        taken = await first.fetch(TAKE_EVENTS, key, 2)
        assert len(taken) == 2 and await advisory_locks(pool, key) == 1
        waiting = asyncio.create_task(second.fetch(TAKE_EVENTS, key, 2))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # the lock is held
        tx = first.transaction()
        await tx.start()
        await first.execute(RELEASE_EVENTS, key, [r["id"] for r in taken])
        await asyncio.sleep(0.2)
        assert not waiting.done()  # the lock is free now, the deleted rows are not
        await tx.commit()
        rest = await asyncio.wait_for(waiting, 5)
        assert [r["id"] for r in rest] == [max(r["id"] for r in taken) + 1]
        await second.execute(RELEASE_EVENTS, key, [r["id"] for r in rest])
        assert await second.fetch(TAKE_EVENTS, key, 2) == []
    assert await advisory_locks(pool, key) == 0
    assert await count(pool, "SELECT count(*) FROM event_outbox") == 0


async def test_an_event_relay_that_fails_or_is_cancelled_mid_round_gives_the_lock_back(
    nc: Client, pool: asyncpg.Pool, topo: Topology
) -> None:
    """Between its take and its release a relay holds the lock every relay waits for. A publish that
    fails, or a relay cancelled while it waits for its PubAcks, must not keep it: the connection is
    closed instead of going back to the pool, its session ends, the lock is free, and the rows are
    still there for the next round, which another relay takes at once."""
    key = 4848
    await commit_events(pool, pings(topo, 0, 2, "fail"))
    failing = EventOutboxRelay(pool, Publisher(nc, timeout=0.3, attempts=1), ordered_lock=key)
    with pytest.raises(PublishError):
        await failing.relay_once()  # no stream yet: no PubAck
    await until(lambda: lock_free(pool, key), 5, "the failed round's lock given back")
    assert await count(pool, "SELECT count(*) FROM event_outbox") == 1

    class Stuck(Publisher):
        async def publish_many(self, msgs: Sequence[OutgoingMessage]) -> None:
            await asyncio.sleep(3600)

    stuck = EventOutboxRelay(pool, Stuck(nc), ordered_lock=key)
    task = asyncio.create_task(stuck.relay_once())
    await until(lambda: lock_held(pool, key), 5, "the stuck round holding the lock")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(lambda: lock_free(pool, key), 5, "the cancelled round's lock given back")

    await provision_streams(nc.jetstream(), topo)
    relay = EventOutboxRelay(pool, Publisher(nc), ordered_lock=key)
    assert await asyncio.wait_for(relay.relay_once(), 5) == 1
    assert await stored_order(nc, topo.events_stream) == [0, 1]
    assert await count(pool, "SELECT count(*) FROM event_outbox") == 0
    assert await advisory_locks(pool, key) == 0


async def test_a_paced_relay_reads_once_per_pace_under_load_and_at_once_when_idle(
    nc: Client, pool: asyncpg.Pool, topo: Topology
) -> None:
    """The lifecycle-event relay's ``pace``: commits that come while it reads the table are taken
    together after the pace, not one read per commit; every event is published once, in order; and a
    commit that finds the relay idle is read at once, not after the pace."""
    await provision_streams(nc.jetstream(), topo)
    pace = 1.0
    # A round may take all 40 rows (a row each here): the reads counted are the pace's.
    relay = CountingEventRelay(
        pool, Publisher(nc), batch=64, poll_interval=30.0, ordered_lock=4545, pace=pace
    )
    task = asyncio.create_task(relay.run())
    loop = asyncio.get_running_loop()
    try:
        reads = await relay.started()
        # 40 commits back to back, each waking the relay as the scheduler does: a burst. Under load a
        # commit comes while a read is under way; here the first read is held until the second commit
        # woke the relay, so that it does on any machine (a read that ends before the next commit
        # leaves the relay idle, and that commit is rightly read at once).
        relay.hold = asyncio.Event()
        began = loop.time()
        for n in range(40):
            await commit_events(pool, pings(topo, n, 1, "pace"))
            relay.wake()
            if n == 0:
                async with asyncio.timeout(5):
                    while relay.calls == reads:  # the first commit's read has begun
                        await asyncio.sleep(0.005)
            elif n == 1:
                relay.hold.set()
        burst = loop.time() - began
        await until_published(relay, 40, timeout=20)
        # Unpaced, a relay reads again after every read that a commit overlapped: ~one read per commit
        # or two. Paced: one read at once, then one per pace while the burst lasts.
        assert relay.calls - reads <= 2 + int(burst / pace), (relay.calls - reads, burst)
        # A read that the burst's wakes overlapped is followed by one more after the pace (it cannot
        # know it took everything); once that one found nothing the relay is idle.
        await asyncio.sleep(pace + 0.2)
        # Idle now (its last read found everything): a commit is read at once, well inside the pace.
        calls = relay.calls
        began = loop.time()
        await commit_events(pool, pings(topo, 40, 1, "pace"))
        relay.wake()
        await until_published(relay, 41)
        assert loop.time() - began < pace / 2
        assert relay.calls == calls + 1
    finally:
        await relay.shutdown()
        await task
    assert await stored_order(nc, topo.events_stream) == list(range(41))
    assert await count(pool, "SELECT count(*) FROM event_outbox") == 0


async def test_the_migration_moves_events_left_in_the_outbox_to_the_event_outbox(
    empty_database_url: str,
) -> None:
    """A database of the version before (events as ``outbox`` rows) keeps the events it had not
    published: 0098 moves them, oldest first, and leaves every other row in ``outbox``."""
    conn = await asyncpg.connect(empty_database_url)
    try:
        assert await migrate(conn, up_to=97) == [m.version for m in load_migrations() if m.version <= 97]
        assert await conn.fetchval("SELECT to_regclass('event_outbox')") is None
        await conn.execute(
            "INSERT INTO outbox (subject, payload, msg_id) VALUES "
            "('ns.legato.notify.run.wf.running', 'e1', 'run:r1:1'), ('legato.work.q', 'w', 'work:1'), "
            "('legato.notify.step.wf.queued', 'e2', 'step:r1:a:1')"
        )
        assert await migrate(conn) == [m.version for m in load_migrations() if m.version >= 98]
        moved = await conn.fetch("SELECT subjects, payloads, msg_ids FROM event_outbox ORDER BY id")
        assert [tuple(r.values()) for r in moved] == [
            (["ns.legato.notify.run.wf.running"], [b"e1"], ["run:r1:1"]),
            (["legato.notify.step.wf.queued"], [b"e2"], ["step:r1:a:1"]),
        ]
        assert await conn.fetchval("SELECT array_agg(msg_id) FROM outbox") == ["work:1"]
    finally:
        await conn.close()


async def test_a_relay_ignores_handed_rows_of_kinds_it_does_not_publish(
    nc: Client, pool: asyncpg.Pool, topo: Topology
) -> None:
    relay = OutboxRelay(pool, Publisher(nc), kinds=("trigger",))
    relay.committed([(1, OutgoingMessage(topo.event_subject("wf"), b"{}"))])
    assert not relay._handed and not relay._wake.is_set()
    relay.committed([(2, OutgoingMessage(topo.trigger_subject("wf"), b"{}"))])
    assert [row_id for row_id, _ in relay._handed] == [2]


async def test_migrations_are_safe_when_services_start_at_once(empty_database_url: str) -> None:
    results = await asyncio.gather(*(migrate_url(empty_database_url) for _ in range(6)))
    applied = [v for r in results for v in r]
    assert len(applied) == len(set(applied)) and applied  # each migration applied by exactly one
    again = await migrate_url(empty_database_url)
    assert again == []


async def test_no_index_of_the_run_tables_repeats_another(pool: asyncpg.Pool) -> None:
    """Every write of a run, a step or an attempt updates every index of its table: an index whose
    columns begin another's, on the same rows, only costs writes (0097 dropped one)."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT c.relname AS tbl, i.relname AS idx, x.indkey::int2[] AS cols, x.indisunique AS uniq, "
            "pg_get_expr(x.indpred, x.indrelid) AS pred FROM pg_index x "
            "JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class c ON c.oid = x.indrelid "
            "WHERE c.relname = ANY($1::text[])",
            ["workflow_instance", "step_run", "step_attempt", "outbox", "timeline"],
        )
        redundant = [
            (a["idx"], b["idx"])
            for a in rows
            for b in rows
            if a["idx"] != b["idx"]
            and a["tbl"] == b["tbl"]
            and not a["uniq"]
            and a["pred"] == b["pred"]
            and list(b["cols"][: len(a["cols"])]) == list(a["cols"])
        ]
        assert redundant == []
        # The lookups of a step's children (foreach collection, the API's iteration list) keep an index.
        await conn.execute("SET enable_seqscan = off")
        plan = "\n".join(
            r[0]
            for r in await conn.fetch(
                "EXPLAIN SELECT DISTINCT ON (parent_iteration) parent_iteration, status "
                "FROM workflow_instance WHERE parent_instance_id = 'p' AND parent_step_id = 's' "
                "ORDER BY parent_iteration, seq DESC"
            )
        )
        assert "workflow_instance_children" in plan, plan


async def test_graceful_shutdown_finishes_in_flight_work(
    nc: Client, pool: asyncpg.Pool, topo: Topology
) -> None:
    await provision_streams(nc.jetstream(), topo)
    await publish(nc, topo, [msgspec.json.encode(Ping(n=i)) for i in range(5)])
    started = asyncio.Event()
    begun: list[int] = []
    finished: list[int] = []

    async def handler(d: Delivery[Ping]) -> None:
        begun.append(d.message.n)
        if len(begun) == 5:
            started.set()
        await asyncio.sleep(0.8)
        finished.append(d.message.n)

    loop = ConsumerLoop(
        nc.jetstream(), spec_for(topo), DECODER, handler, dead_letters=PostgresDeadLetters(pool)
    )
    task = asyncio.create_task(loop.run())
    await asyncio.wait_for(started.wait(), 10)
    await loop.shutdown()  # asks to stop while 5 handlers are mid-way
    await task
    assert sorted(finished) == [0, 1, 2, 3, 4]
    assert loop.stats.acked == 5
    await until(lambda: all_settled(nc, topo), 5.0, "every message acked at the server")


async def test_long_handler_is_kept_alive_with_in_progress(
    nc: Client, pool: asyncpg.Pool, topo: Topology
) -> None:
    await provision_streams(nc.jetstream(), topo)
    await publish(nc, topo, [msgspec.json.encode(Ping(n=1))])
    calls = 0

    async def handler(d: Delivery[Ping]) -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(3.5)  # longer than ack_wait (1.5 s): only heartbeats prevent a redelivery

    loop = ConsumerLoop(
        nc.jetstream(),
        spec_for(topo, ack_wait=1.5),
        DECODER,
        handler,
        dead_letters=PostgresDeadLetters(pool),
        heartbeat_interval=0.5,
    )

    async def done() -> bool:
        return loop.stats.acked >= 1

    await run_until(loop, done)
    assert calls == 1 and loop.stats.redelivered == 0


async def test_publish_many_keeps_order_checks_every_ack_and_fails_loudly(nc: Client, topo: Topology) -> None:
    await provision_streams(nc.jetstream(), topo)
    pub = Publisher(nc, max_pipeline=7, timeout=2.0, attempts=2)  # several chunks of pipelined publishes
    msgs = [
        OutgoingMessage(topo.event_subject("wf"), msgspec.json.encode(Ping(n=i)), msg_id=f"order-{i}")
        for i in range(30)
    ]
    acks = await pub.publish_many(msgs)
    assert [a.seq for a in acks if a is not None] == sorted(a.seq for a in acks if a is not None)
    assert len({a.seq for a in acks if a is not None}) == 30 and pub.duplicates == 0
    again = await pub.publish_many(msgs[:10])  # same ids: JetStream drops them, each ack says so
    assert pub.duplicates == 10 and all(a is not None and a.duplicate for a in again)
    info = await nc.jetstream().stream_info(topo.events_stream)
    assert info.state.messages == 30
    with pytest.raises(PublishError, match=r"nostream\.subject"):
        await Publisher(nc, timeout=0.5, attempts=1).publish_many(
            [OutgoingMessage("nostream.subject", b"{}", msg_id="x")]
        )


async def test_each_work_queue_keeps_one_message_no_consumer_takes(nc: Client, topo: Topology) -> None:
    """The trigger, event and work streams each get one message that keeps them from emptying (their
    file store would otherwise drop and recreate a message block every other run below saturation).
    One ever, however often it is put; no consumer's filter takes it, not even a work queue named
    ``keep`` (either lane); and the stream's real messages are delivered and acked as before."""
    js = nc.jetstream()
    await provision_streams(js, topo)
    assert await keep_work_queues_open(js, topo) == 3
    assert await keep_work_queues_open(js, topo) == 0  # already there: not a second one
    streams = (topo.triggers_stream, topo.events_stream, topo.work_stream)
    for stream in streams:
        assert (await js.stream_info(stream)).state.messages == 1
    consumers = [
        ConsumerSpec(topo.work_stream, "q_keep", filter_subject=topo.work_subject("keep")),
        ConsumerSpec(topo.work_stream, "q_keep_bulk", filter_subject=topo.work_bulk_subject("keep")),
        ConsumerSpec(topo.work_stream, "q_default", filter_subject=topo.work_subject("default")),
        ConsumerSpec(topo.triggers_stream, "p0", filter_subject=f"{topo.subject_prefix('trigger')}0.>"),
        ConsumerSpec(topo.events_stream, "e0", filter_subject=f"{topo.subject_prefix('event')}0.>"),
    ]
    for spec in consumers:
        await provision_consumer(js, spec)
        assert (await js.consumer_info(spec.stream, spec.durable)).num_pending == 0
    await js.publish(topo.work_subject("default"), b"item")
    sub = await js.pull_subscribe_bind(durable="q_default", stream=topo.work_stream)
    [msg] = await sub.fetch(1, timeout=5)
    assert msg.data == b"item"
    await msg.ack_sync()
    assert (await js.stream_info(topo.work_stream)).state.messages == 1  # only the keeper is left
