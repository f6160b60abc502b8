"""Bus and outbox throughput against this machine's raw JetStream publish rate, in one run.

Prints:
- raw JetStream publish, one at a time (acked) and pipelined;
- the publishing process's CPU per message in rounds of 8 and 64: nats-py's ``publish_async`` (a
  future, a semaphore wait, a NUID and a JSON parse per message) against ``Publisher`` (one reply
  subscription, a future per round);
- the consumer loop: publish -> consume -> handler commits a Postgres transaction (dedup key + effect)
  -> ack, in messages/s;
- the outbox relay: committed outbox rows -> published with checked PubAcks -> deleted, in rows/s.

Starts its own embedded nats-server and PostgreSQL (or uses LEGATO_BENCH_NATS_URL /
LEGATO_BENCH_DATABASE_URL). Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import msgspec
import nats
from nats.js import JetStreamContext

from legato.bus import (
    ConsumerLoop,
    ConsumerSpec,
    Delivery,
    OutgoingMessage,
    Publisher,
    Topology,
    provision_streams,
)
from legato.devstack import EmbeddedNats, EmbeddedPostgres
from legato.store import (
    OutboxRelay,
    PostgresDeadLetters,
    add_to_outbox,
    create_pool,
    mark_applied,
    migrate_url,
)
from legato.store.pool import ensure_database


class Ping(msgspec.Struct, frozen=True):
    n: int
    payload: str = ""


async def publish_cpu(
    js: JetStreamContext, pub: Publisher, subject: str, body: bytes, way: str, size: int, n: int
) -> float:
    """This process's CPU (user + system) per message published in rounds of ``size``, acks checked."""
    tag = uuid.uuid4().hex[:8]
    before = resource.getrusage(resource.RUSAGE_SELF)
    for start in range(0, n, size):
        ids = [f"{tag}-{i}" for i in range(start, min(n, start + size))]
        if way == "publish_async":
            futures = [await js.publish_async(subject, body, headers={"Nats-Msg-Id": i}) for i in ids]
            await asyncio.wait(futures, timeout=5)
            for future in futures:
                future.result()
        else:
            await pub.publish_many([OutgoingMessage(subject, body, msg_id=i) for i in ids])
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu / n * 1e6


async def bench(nats_url: str, db_url: str, n: int) -> None:
    await ensure_database(db_url)
    await migrate_url(db_url)
    ns = f"bench{uuid.uuid4().hex[:6]}"
    topo = Topology(ns)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await provision_streams(js, topo)
    pool = await create_pool(db_url, max_size=8)
    async with pool.acquire() as conn:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_effect (n integer, msg_id text)")
        await conn.execute("TRUNCATE bench_effect")
    body = msgspec.json.encode(Ping(n=0, payload="x" * 200))
    subject = topo.event_subject("bench")

    # 1. Raw JetStream publish.
    t0 = time.perf_counter()
    k = min(n, 3000)
    for i in range(k):
        await js.publish(subject, body, headers={"Nats-Msg-Id": f"raw1-{i}"})
    one_by_one = k / (time.perf_counter() - t0)
    pub = Publisher(nc)
    t0 = time.perf_counter()
    for start in range(0, n, 1000):
        await pub.publish_many(
            [OutgoingMessage(subject, body, msg_id=f"raw2-{i}") for i in range(start, min(n, start + 1000))]
        )
    pipelined = n / (time.perf_counter() - t0)
    await js.purge_stream(topo.events_stream)
    per_message = {
        (way, size): await publish_cpu(js, pub, subject, body, way, size, min(n, 20_000))
        for size in (8, 64)
        for way in ("publish_async", "Publisher")
    }
    await js.purge_stream(topo.events_stream)

    # 2. Consumer loop with a committing handler.
    for start in range(0, n, 1000):
        await pub.publish_many(
            [
                OutgoingMessage(subject, msgspec.json.encode(Ping(n=i, payload="x" * 200)), msg_id=f"c-{i}")
                for i in range(start, min(n, start + 1000))
            ]
        )
    done = asyncio.Event()
    count = 0

    async def handler(d: Delivery[Ping]) -> None:
        nonlocal count
        async with pool.acquire() as conn, conn.transaction():
            if await mark_applied(conn, "bench", d.msg_id):
                await conn.execute("INSERT INTO bench_effect VALUES ($1, $2)", d.message.n, d.msg_id)
        count += 1
        if count >= n:
            done.set()

    loop = ConsumerLoop(
        js,
        ConsumerSpec(topo.events_stream, topo.consumer_name("bench"), f"{topo.subject_prefix('event')}>"),
        msgspec.json.Decoder(Ping),
        handler,
        dead_letters=PostgresDeadLetters(pool),
        batch=256,
        max_in_flight=256,
    )
    t0 = time.perf_counter()
    task = asyncio.create_task(loop.run())
    await asyncio.wait_for(done.wait(), timeout=600)
    consumed = n / (time.perf_counter() - t0)
    await loop.shutdown()
    await task

    # 3. Outbox relay.
    async with pool.acquire() as conn, conn.transaction():
        for start in range(0, n, 5000):
            await add_to_outbox(
                conn, [OutgoingMessage(subject, body) for _ in range(start, min(n, start + 5000))]
            )
    relay = OutboxRelay(pool, Publisher(nc), batch=1000)
    t0 = time.perf_counter()
    while await relay.relay_once():
        pass
    relayed = relay.published / (time.perf_counter() - t0)

    print(f"messages: {n}, payload {len(body)} B, namespace {ns}")
    print(f"raw JetStream publish, one at a time (acked):  {one_by_one:10,.0f} msg/s")
    print(f"raw JetStream publish, pipelined (acked):      {pipelined:10,.0f} msg/s")
    for size in (8, 64):
        lib, ours = per_message[("publish_async", size)], per_message[("Publisher", size)]
        print(
            f"publishing CPU per message, rounds of {size:>2}:    nats-py publish_async {lib:5.1f} us, "
            f"Publisher {ours:5.1f} us ({ours / lib:.2f}x)"
        )
    print(
        f"consume -> handler commit -> ack:              {consumed:10,.0f} msg/s "
        f"({consumed / pipelined:.2f}x pipelined publish, {consumed / one_by_one:.2f}x one-at-a-time)"
    )
    print(
        f"outbox relay (publish + PubAck + delete):      {relayed:10,.0f} rows/s "
        f"({relayed / pipelined:.2f}x pipelined publish)"
    )
    await pool.close()
    await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=20000)
    args = parser.parse_args()
    nats_url = os.environ.get("LEGATO_BENCH_NATS_URL")
    db_url = os.environ.get("LEGATO_BENCH_DATABASE_URL")
    tmp = Path(tempfile.mkdtemp(prefix="legato-bench-"))
    tmp.chmod(0o711)
    servers: list[EmbeddedNats | EmbeddedPostgres] = []
    try:
        if not nats_url:
            ns = EmbeddedNats(tmp / "nats", preferred_port=0).start()
            servers.append(ns)
            nats_url = ns.url
        if not db_url:
            pg = EmbeddedPostgres(tmp / "pg", preferred_port=0, durable=True).start()
            servers.append(pg)
            db_url = pg.url("legato_bench")
        asyncio.run(bench(nats_url, db_url, args.n))
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
