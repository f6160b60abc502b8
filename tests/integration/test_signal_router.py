"""The signal router's ingest against a real PostgreSQL: two routers each bringing a different leg of the
same tuples at the same moment still fire every tuple exactly once; outcomes are counted in metrics."""

from __future__ import annotations

import asyncio
import functools
import random
from datetime import UTC, datetime

import asyncpg
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from legato.bus.topology import Topology
from legato.core import parse_definition
from legato.protocol.messages import StartRun, decode_trigger
from legato.signal_router.ingest import IncomingSignal, SignalIngest, batch_lock_keys
from legato.signal_router.service import SignalUpkeep
from legato.store import create_pool, run_transaction
from legato.store.signal_triggers import SIGNAL_TRIGGER_LOCK_KEY
from legato.telemetry import configure_metrics, shutdown_metrics
from legato.trigger.registry import push_workflow
from tests.integration.test_generic_metrics import values

PAIR = """
id: pair
params:
  key: {type: string, required: true}
triggers:
  - type: signal
    id: both
    signals:
      - name: left
      - name: right
    join: [key]
    params:
      key: "${signals.left.key}"
steps:
  - id: s
    type: noop
"""

TUPLES = 300


async def push_pair(pool: asyncpg.Pool, topology: Topology) -> None:
    """Push and activate PAIR (which registers its signal trigger)."""
    async with pool.acquire() as conn, conn.transaction():
        await push_workflow(
            conn,
            topology,
            parse_definition(PAIR, source="pair.yaml"),
            source_text=PAIR,
            actor="t",
            activate=True,
        )


async def pair_ingest(pool: asyncpg.Pool) -> SignalIngest:
    """PAIR pushed and active, and an ingest on ``pool`` (its relay never woken)."""
    topology = Topology("t")
    await push_pair(pool, topology)
    return SignalIngest(pool, topology, wake_relay=lambda: None)


def incoming(name: str, key: int, copy: int = 0) -> IncomingSignal:
    return IncomingSignal(
        name=name,
        id=f"{name}-{key}-{copy}",
        body={"key": f"k{key}"},
        raw=b"",
        headers={},
        stream_seq=0,
        published_at=datetime.now(UTC),
        traceparent=None,
    )


async def test_routers_bringing_different_legs_concurrently_fire_each_tuple_once(database_url: str) -> None:
    topology = Topology("t")
    pools = [await create_pool(database_url, max_size=4) for _ in range(2)]
    try:
        await push_pair(pools[0], topology)
        routers = [SignalIngest(pool, topology, wake_relay=lambda: None) for pool in pools]
        rng = random.Random(3)
        # Router 0 gets every left leg, router 1 every right leg (and a distinct-id copy of some), in
        # small batches at the same time, so both often hold one leg of the same tuple at once.
        work: list[list[IncomingSignal]] = [
            [incoming("left", k) for k in range(TUPLES)],
            [incoming("right", k) for k in range(TUPLES)]
            + [incoming("right", k, 1) for k in range(0, TUPLES, 3)],
        ]
        for w in work:
            rng.shuffle(w)

        async def feed(router: SignalIngest, signals: list[IncomingSignal]) -> None:
            for start in range(0, len(signals), 7):
                batch = signals[start : start + 7]
                await run_transaction(router.pool, functools.partial(router.apply_signals, signals=batch))

        await asyncio.gather(*(feed(r, w) for r, w in zip(routers, work, strict=True)))
        # Redelivery of everything to the other router: stored already, no second effect.
        await feed(routers[1], work[0])
        async with pools[0].acquire() as conn:
            fires = await conn.fetchval("SELECT count(*) FROM signal_trigger_fire")
            starts = await conn.fetch("SELECT msg_id FROM outbox WHERE msg_id LIKE 'start:%'")
            pending = await conn.fetchval("SELECT count(*) FROM signal_join WHERE fired_at IS NULL")
            stored = await conn.fetchval("SELECT count(*) FROM signal")
        assert fires == TUPLES
        assert len(starts) == TUPLES == len({r["msg_id"] for r in starts})
        assert pending == 0
        assert stored == 2 * TUPLES + len(range(0, TUPLES, 3))
        assert routers[0].fired + routers[1].fired == TUPLES
    finally:
        for pool in pools:
            await pool.close()


async def test_ingest_counts_signals_by_outcome_and_gauges_pending_joins(database_url: str) -> None:
    reader = InMemoryMetricReader()
    configure_metrics("test", readers=[reader])
    pool = await create_pool(database_url, max_size=4)
    try:
        router = await pair_ingest(pool)
        bad = incoming("left", 99)
        bad.error = "not a JSON object: got an array"
        batches = [
            [incoming("left", 1), incoming("left", 2), incoming("right", 1), bad],
            [incoming("left", 1)],  # a redelivery
        ]
        for batch in batches:
            await run_transaction(pool, functools.partial(router.apply_signals, signals=batch))
        upkeep = SignalUpkeep(pool, router)
        await upkeep.upkeep()
        got = values(reader)
        assert got[("legato.signals.ingested", (("status", "accepted"),))] == 3
        assert got[("legato.signals.ingested", (("status", "rejected"),))] == 1
        assert got[("legato.signals.ingested", (("status", "duplicate"),))] == 1
        assert got[("legato.joins.pending", ())] == 1  # k2 waits for its right leg; k1 fired
    finally:
        await pool.close()
        shutdown_metrics()


PER_DAY = """
id: per-day
params:
  day: {type: string, required: true}
  n: {type: int}
triggers:
  - type: signal
    id: first-of-day
    signals:
      - name: tick
    join: [day]
    params:
      day: "${signals.tick.day}"
      n: "${signals.tick.n}"
steps:
  - id: s
    type: noop
"""


async def test_one_signal_trigger_with_join_keys_fires_once_per_tuple(database_url: str) -> None:
    pool = await create_pool(database_url, max_size=2)
    try:
        topology = Topology("t")
        async with pool.acquire() as conn, conn.transaction():
            await push_workflow(
                conn, topology, parse_definition(PER_DAY), source_text=PER_DAY, actor="t", activate=True
            )
        router = SignalIngest(pool, topology, wake_relay=lambda: None)
        ticks = [incoming("tick", k) for k in range(4)]
        for n, tick in enumerate(ticks):
            tick.body = {"day": "mon" if n < 3 else "tue", "n": n}
        # Two of Monday's in one batch, the third in a later one.
        for batch in (ticks[:2], ticks[2:]):
            await run_transaction(pool, functools.partial(router.apply_signals, signals=batch))
        async with pool.acquire() as conn:
            fires = await conn.fetch("SELECT tuple_key, params FROM signal_trigger_fire ORDER BY tuple_key")
            starts = [
                decode_trigger(r["payload"])
                for r in await conn.fetch("SELECT payload FROM outbox WHERE msg_id LIKE 'start:%'")
            ]
        assert [(f["tuple_key"], f["params"]) for f in fires] == [
            ('["mon"]', {"day": "mon", "n": 0}),
            ('["tue"]', {"day": "tue", "n": 3}),
        ]
        # The run gets the params recorded with the fire (the first signal of the tuple).
        assert sorted((m.trigger_key, m.params["n"]) for m in starts if isinstance(m, StartRun)) == [
            ('signal:first-of-day:["mon"]', 0),
            ('signal:first-of-day:["tue"]', 3),
        ]
    finally:
        await pool.close()


async def test_a_tuple_completed_again_after_its_row_was_swept_does_not_fire_again(database_url: str) -> None:
    pool = await create_pool(database_url, max_size=2)
    try:
        router = await pair_ingest(pool)
        first = [incoming("left", 1), incoming("right", 1)]
        await run_transaction(pool, functools.partial(router.apply_signals, signals=first))
        async with pool.acquire() as conn:
            await conn.execute("UPDATE signal_join SET expires_at = now() - interval '2 hours'")
        await SignalUpkeep(pool, router).upkeep()  # sweeps the fired tuple's row
        late = [incoming("left", 1, copy=1), incoming("right", 1, copy=1)]
        for sig in late:  # one at a time: the tuple is partial, then complete again
            await run_transaction(pool, functools.partial(router.apply_signals, signals=[sig]))
        async with pool.acquire() as conn:
            fires = await conn.fetchval("SELECT count(*) FROM signal_trigger_fire")
            starts = await conn.fetchval("SELECT count(*) FROM outbox WHERE msg_id LIKE 'start:%'")
            pending = await conn.fetchval("SELECT count(*) FROM signal_join WHERE fired_at IS NULL")
        assert (fires, starts, pending) == (1, 1, 0)
    finally:
        await pool.close()


async def test_a_batch_mixing_a_redelivered_signal_with_new_ones_counts_only_the_new_ones(
    database_url: str,
) -> None:
    """The batch's statement writes its join rows only when every signal in it is new; a redelivered
    one sends the batch down a second statement built from its new signals alone. Here the copy is the
    left leg of a tuple that expired meanwhile: counted again, it would complete the tuple with the old
    leg; the new right leg must start the tuple over instead."""
    pool = await create_pool(database_url, max_size=2)
    try:
        router = await pair_ingest(pool)
        await run_transaction(pool, functools.partial(router.apply_signals, signals=[incoming("left", 1)]))
        async with pool.acquire() as conn:
            await conn.execute("UPDATE signal_join SET expires_at = now() - interval '1 hour'")
        batch = [incoming("left", 1), incoming("right", 1), incoming("left", 2), incoming("right", 2)]
        rows = await run_transaction(pool, functools.partial(router.apply_signals, signals=batch))
        async with pool.acquire() as conn:
            fires = await conn.fetch("SELECT tuple_key FROM signal_trigger_fire")
            starts = await conn.fetch("SELECT id, msg_id FROM outbox WHERE msg_id LIKE 'start:%'")
            pending = await conn.fetch("SELECT tuple_key, members FROM signal_join WHERE fired_at IS NULL")
        assert [f["tuple_key"] for f in fires] == ['["k2"]']
        assert [(r["tuple_key"], sorted(r["members"])) for r in pending] == [('["k1"]', ["right"])]
        assert [(r["id"], r["msg_id"]) for r in starts] == [(i, m.msg_id) for i, m in rows]
        assert router.stored == 4 and router.fired == 1
    finally:
        await pool.close()


async def test_the_batch_path_takes_its_locks_with_its_begin_and_fires_once(database_url: str) -> None:
    """``SignalIngest.apply``'s own transaction (locks taken with the BEGIN, ``apply_signals(locked=True)``):
    a trigger registration waiting for the exclusive lock is held until the batch commits."""
    pool = await create_pool(database_url, max_size=4)
    try:
        router = await pair_ingest(pool)
        signals = [incoming("left", 5), incoming("right", 5)]
        entered = asyncio.Event()
        go_on = asyncio.Event()
        real_fire = router._fire

        async def slow_fire(*args: object, **kwargs: object) -> object:
            entered.set()
            await go_on.wait()
            return await real_fire(*args, **kwargs)  # type: ignore[arg-type]

        router._fire = slow_fire  # type: ignore[method-assign]
        task = asyncio.create_task(
            run_transaction(
                pool,
                functools.partial(router.apply_signals, signals=signals, locked=True),
                shared_locks=batch_lock_keys(signals),
            )
        )
        await entered.wait()
        async with pool.acquire() as conn:
            # What a trigger registration takes (exclusive): not while the batch holds it shared.
            assert not await conn.fetchval("SELECT pg_try_advisory_lock($1::bigint)", SIGNAL_TRIGGER_LOCK_KEY)
            go_on.set()
            rows = await task
            assert len(rows) == 1
            assert await conn.fetchval("SELECT pg_try_advisory_lock($1::bigint)", SIGNAL_TRIGGER_LOCK_KEY)
            assert await conn.fetchval("SELECT count(*) FROM signal_trigger_fire") == 1
    finally:
        await pool.close()
