"""The I/O floor of a run's critical path: each kind of Postgres and JetStream operation the path makes,
timed alone, one at a time, on the servers the other benches use (a durable Postgres, nats-server).

A one-step run's unloaded round trip (``profile.py``) makes, on its critical path:

- the API's start: one durable statement (which request ids are known, the accepted start and its
  StartRun in the outbox);
- the StartRun's publish and its delivery to the scheduler's waiting fetch;
- the scheduler's start batch: one durable statement (the common batch, ``scheduler/writes.py``);
- the work item's publish and delivery; the executor's claim (a KV create);
- the result's publish and delivery; the scheduler's result batch: one durable statement.

This bench prints the p50 of each kind of operation and their sum along that path: what the round
trip would take if nothing but the servers' work and the round trips themselves cost time. The
difference to ``profile.py``'s round trip is the services' own time per hop (decoding, the event
loop, handing a message from task to task). (It also times a transaction of the older kind,
BEGIN, lock, read, write, COMMIT, for comparison.)

``--gaps 0,5,50``: the same operations spaced by each gap in turn, one column each. An unloaded run
reaches every process after it sat idle (``profile.py`` starts one run when the last one ended and
its poll saw it, ~50 ms apart; a real idle system, seconds apart), and an operation that starts cold
(caches, idle CPUs and, on a virtual machine, halted virtual CPUs to wake) takes longer than the same
operation back to back: on a 2-core virtual machine, 2-3x. Not a test: it prints figures.
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


async def timed(n: int, op: Callable[[int], Awaitable[object]], gap: float = 0.0) -> float:
    """p50 of ``n`` runs of ``op``, in ms (after 20 to warm up), ``gap`` seconds apart (0: back to back)."""
    for i in range(20):
        await op(-1 - i)
    times = []
    for i in range(n):
        if gap:
            await asyncio.sleep(gap)
        t0 = time.perf_counter()
        await op(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


async def floor(nats_url: str, database_url: str, n: int, gaps: list[float]) -> None:
    await ensure_database(database_url)
    conn = await asyncpg.connect(database_url)
    nc = await nats.connect(nats_url)
    figures: dict[float, list[float]] = {}
    try:
        await conn.execute("CREATE TABLE floor_rows (id bigserial PRIMARY KEY, v text NOT NULL)")
        js = nc.jetstream()
        stream = f"FLOOR_{uuid.uuid4().hex[:6]}"
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        sub = await js.pull_subscribe(f"{stream}.x", durable="floor")
        kv = await js.create_key_value(bucket=f"floor{uuid.uuid4().hex[:6]}")
        keys = iter(range(10**9))  # every claim creates a new key, whatever the gap

        async def transaction(i: int) -> None:
            async with conn.transaction():
                await conn.fetchval("SELECT id FROM floor_rows WHERE id = $1 FOR UPDATE", 1)
                await conn.fetchval("SELECT count(*) FROM floor_rows WHERE id = $1", i)
                await conn.execute("INSERT INTO floor_rows (v) VALUES ($1)", str(i))

        async def delivered(i: int) -> None:
            fetch = asyncio.ensure_future(sub.fetch(1, timeout=5))
            await asyncio.sleep(0)  # the pull request is out before the publish
            await js.publish(f"{stream}.x", b"x", headers={"Nats-Msg-Id": f"d{uuid.uuid4().hex}"})
            for msg in await fetch:
                await msg.ack()

        ops: list[Callable[[int], Awaitable[object]]] = [
            lambda i: conn.fetchval("SELECT count(*) FROM floor_rows WHERE id = $1", i),
            lambda i: conn.execute("INSERT INTO floor_rows (v) VALUES ($1)", str(i)),
            transaction,
            lambda i: js.publish(f"{stream}.y", b"x", headers={"Nats-Msg-Id": f"p{uuid.uuid4().hex}"}),
            delivered,
            lambda i: kv.create(f"k{next(keys)}", b"v"),
        ]
        for gap in gaps:
            figures[gap] = [await timed(n, op, gap / 1000) for op in ops]
    finally:
        await nc.close()
        await conn.close()
    print(f"the I/O floor of a one-step run's critical path, p50 of {n} operations each, one at a time (ms),")
    print("by the gap between two operations (0: back to back; an unloaded run's hops start cold):")
    print(f"  {'gap (ms)':48}" + "".join(f"{gap:>8g}" for gap in gaps))
    for k, label in enumerate(LABELS):
        print(f"  {label:48}" + "".join(f"{figures[gap][k]:8.3f}" for gap in gaps))
    paths = []
    for gap in gaps:
        _, write, _, _, deliver, claim = figures[gap]
        paths.append(3 * write + 3 * deliver + claim)
    print(
        "  along a run's path (three durable statements, three deliveries, one claim): "
        + " / ".join(f"{p:.2f}" for p in paths)
    )


LABELS = (
    "postgres read",
    "postgres durable write (one statement)",
    "postgres BEGIN, lock, read, write, COMMIT",
    "jetstream publish until its PubAck",
    "jetstream publish, PubAck, delivery to a fetch",
    "jetstream KV create (the executor's claim)",
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=500, help="operations of each kind")
    parser.add_argument(
        "--gaps",
        type=lambda text: [float(g) for g in text.split(",") if g.strip()],
        default=[0.0],
        help="comma-separated ms between two operations, one column each (e.g. 0,5,50; default 0)",
    )
    args = parser.parse_args()
    if any(g < 0 for g in args.gaps) or not args.gaps:
        parser.error(f"--gaps {args.gaps}: one or more gaps of 0 ms or more")
    with bench_servers("legato_floor") as servers:
        asyncio.run(floor(servers.nats_url, servers.database_url, args.n, args.gaps))


if __name__ == "__main__":
    main()
