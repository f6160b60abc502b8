"""The I/O floor of a run's critical path: each kind of Postgres and JetStream operation the path makes,
timed alone, one at a time, on the servers the other benches use (a durable Postgres, nats-server).

A one-step run's unloaded round trip (``profile.py``) makes, on its critical path:

- the API's start: one read and one durable write;
- the StartRun's publish and its delivery to the scheduler's waiting fetch;
- the scheduler's start batch: BEGIN, the workflow row lock, one read, the flush, a durable COMMIT;
- the work item's publish and delivery; the executor's claim (a KV create);
- the result's publish and delivery; the scheduler's result batch (BEGIN, lock, flush, COMMIT).

This bench prints the p50 of each kind of operation and their sum along that path: what the round
trip would take if nothing but the servers' work and the round trips themselves cost time. The
difference to ``profile.py``'s round trip is the services' own time per hop (decoding, the event
loop, handing a message from task to task). Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import nats

from _servers import bench_servers
from legato.store.pool import ensure_database


async def timed(n: int, op: Callable[[int], Awaitable[object]]) -> float:
    """p50 of ``n`` runs of ``op``, in ms (after 20 to warm up)."""
    for i in range(20):
        await op(-1 - i)
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        await op(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


async def floor(nats_url: str, database_url: str, n: int) -> None:
    await ensure_database(database_url)
    conn = await asyncpg.connect(database_url)
    nc = await nats.connect(nats_url)
    try:
        await conn.execute("CREATE TABLE floor_rows (id bigserial PRIMARY KEY, v text NOT NULL)")
        read = await timed(n, lambda i: conn.fetchval("SELECT count(*) FROM floor_rows WHERE id = $1", i))
        write = await timed(n, lambda i: conn.execute("INSERT INTO floor_rows (v) VALUES ($1)", str(i)))

        async def transaction(i: int) -> None:
            async with conn.transaction():
                await conn.fetchval("SELECT id FROM floor_rows WHERE id = $1 FOR UPDATE", 1)
                await conn.fetchval("SELECT count(*) FROM floor_rows WHERE id = $1", i)
                await conn.execute("INSERT INTO floor_rows (v) VALUES ($1)", str(i))

        batch = await timed(n, transaction)
        js = nc.jetstream()
        stream = f"FLOOR_{uuid.uuid4().hex[:6]}"
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        sub = await js.pull_subscribe(f"{stream}.x", durable="floor")

        async def delivered(i: int) -> None:
            fetch = asyncio.ensure_future(sub.fetch(1, timeout=5))
            await asyncio.sleep(0)  # the pull request is out before the publish
            await js.publish(f"{stream}.x", b"x", headers={"Nats-Msg-Id": f"d{i}"})
            for msg in await fetch:
                await msg.ack()

        publish = await timed(n, lambda i: js.publish(f"{stream}.y", b"x", headers={"Nats-Msg-Id": f"p{i}"}))
        deliver = await timed(n, delivered)
        kv = await js.create_key_value(bucket=f"floor{uuid.uuid4().hex[:6]}")
        claim = await timed(n, lambda i: kv.create(f"k{i + 100}", b"v"))
    finally:
        await nc.close()
        await conn.close()
    print(f"the I/O floor of a one-step run's critical path, p50 of {n} operations each, one at a time (ms):")
    print(f"  postgres read                                    {read:6.3f}")
    print(f"  postgres durable write (one statement)           {write:6.3f}")
    print(f"  postgres BEGIN, lock, read, write, COMMIT        {batch:6.3f}")
    print(f"  jetstream publish until its PubAck               {publish:6.3f}")
    print(f"  jetstream publish, PubAck, delivery to a fetch   {deliver:6.3f}")
    print(f"  jetstream KV create (the executor's claim)       {claim:6.3f}")
    path = read + write + 3 * deliver + 2 * batch + claim
    print(
        f"  along a run's path (API read and write, three deliveries, two scheduler batches, one claim): {path:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=500, help="operations of each kind")
    args = parser.parse_args()
    with bench_servers("legato_floor") as servers:
        asyncio.run(floor(servers.nats_url, servers.database_url, args.n))


if __name__ == "__main__":
    main()
