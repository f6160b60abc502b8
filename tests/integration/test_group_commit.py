"""The one group-commit batcher (scheduler actors, signal ingest, API starts) against a real PostgreSQL:
a batch commits in one transaction, a failing item fails only itself, the queue is bounded, and closing
applies what is queued while cancelling fails it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from legato.store import create_pool
from legato.store.batcher import (
    BatcherClosed,
    GroupCommit,
    content_error,
    fail_whole_batch_unless_content_error,
)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(database_url, max_size=4)
    async with p.acquire() as conn:
        await conn.execute("CREATE TABLE item (n integer PRIMARY KEY CHECK (n >= 0), txid bigint NOT NULL)")
    yield p
    await p.close()


class Store:
    """Inserts each batch in one transaction; a negative number breaks the CHECK and aborts it."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.calls: list[list[int]] = []
        self.gate: asyncio.Event | None = None

    async def commit(self, items: list[int]) -> list[int | Exception]:
        self.calls.append(list(items))
        if self.gate is not None:
            await self.gate.wait()
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                "INSERT INTO item (n, txid) VALUES ($1, txid_current())", [(n,) for n in items]
            )
        return [n * 10 if n % 7 else ValueError(f"{n} is refused on its own") for n in items]


async def rows(pool: asyncpg.Pool) -> dict[int, int]:
    return {r["n"]: r["txid"] for r in await pool.fetch("SELECT n, txid FROM item")}


async def test_items_that_arrive_together_commit_in_one_transaction(pool: asyncpg.Pool) -> None:
    store = Store(pool)
    store.gate = asyncio.Event()
    batcher: GroupCommit[int, int] = GroupCommit(store.commit, name="t", batch=100)
    worker = asyncio.create_task(batcher.run())
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0.05)  # the worker holds a batch of one at the gate; the rest queue behind it
    rest = [asyncio.create_task(batcher.submit(n)) for n in range(2, 6)]
    await asyncio.sleep(0.05)
    assert batcher.queued() == [2, 3, 4, 5]  # what waits for the next batch, not the batch at the gate
    store.gate.set()
    assert await asyncio.gather(first, *rest) == [10, 20, 30, 40, 50]
    assert batcher.queued() == []
    assert store.calls == [[1], [2, 3, 4, 5]]
    txids = await rows(pool)
    assert txids[2] == txids[3] == txids[4] == txids[5] != txids[1]
    batcher.close()
    await worker


async def test_a_failing_item_fails_only_its_own_future_and_the_rest_commit(pool: asyncpg.Pool) -> None:
    store = Store(pool)
    store.gate = asyncio.Event()
    batcher: GroupCommit[int, int] = GroupCommit(store.commit, name="t", batch=100)
    worker = asyncio.create_task(batcher.run())
    futures = [asyncio.create_task(batcher.submit(n)) for n in (1, 2, -3, 4, 7)]
    await asyncio.sleep(0.05)
    store.gate.set()
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert results[:2] == [10, 20] and results[3] == 40
    assert isinstance(results[2], asyncpg.CheckViolationError)  # the batch aborted, then alone it did
    assert isinstance(results[4], ValueError)  # committed, but its own outcome says it failed
    assert sorted(await rows(pool)) == [1, 2, 4, 7]
    batcher.close()
    await worker


async def test_a_batch_wide_error_fails_the_batch_without_retrying_item_by_item(pool: asyncpg.Pool) -> None:
    store = Store(pool)
    store.gate = asyncio.Event()
    lost = RuntimeError("lease lost")
    batcher: GroupCommit[int, int] = GroupCommit(
        store.commit,
        name="t",
        batch=100,
        batch_error=lambda exc: lost if isinstance(exc, asyncpg.CheckViolationError) else None,
    )
    worker = asyncio.create_task(batcher.run())
    futures = [asyncio.create_task(batcher.submit(n)) for n in (1, -2, 3)]
    await asyncio.sleep(0.05)
    store.gate.set()
    assert await asyncio.gather(*futures, return_exceptions=True) == [lost, lost, lost]
    assert store.calls == [[1, -2, 3]] and await rows(pool) == {}
    batcher.close()
    await worker


async def test_a_lone_failure_may_be_rescued(pool: asyncpg.Pool) -> None:
    store = Store(pool)
    rescued: list[int] = []

    async def rescue(item: int, exc: Exception) -> int | Exception:
        rescued.append(item)
        return -1 if isinstance(exc, asyncpg.CheckViolationError) else exc

    batcher: GroupCommit[int, int] = GroupCommit(store.commit, name="t", rescue=rescue)
    worker = asyncio.create_task(batcher.run())
    assert await batcher.submit(-5) == -1
    assert rescued == [-5]
    batcher.close()
    await worker


async def test_the_queue_is_bounded(pool: asyncpg.Pool) -> None:
    store = Store(pool)
    store.gate = asyncio.Event()
    batcher: GroupCommit[int, int] = GroupCommit(store.commit, name="t", batch=2, queue_size=3)
    worker = asyncio.create_task(batcher.run())
    held = asyncio.create_task(batcher.submit(1))  # taken by the worker, held at the gate
    await asyncio.sleep(0.05)
    queued = [asyncio.create_task(batcher.submit(n)) for n in (2, 3, 4)]
    blocked = asyncio.create_task(batcher.submit(5))
    await asyncio.sleep(0.05)
    assert batcher.qsize() == 3 and not blocked.done()  # the fourth waits for room: backpressure
    store.gate.set()
    assert await asyncio.gather(held, *queued, blocked) == [10, 20, 30, 40, 50]
    batcher.close()
    await worker


async def test_close_applies_what_is_queued_then_refuses_new_items(pool: asyncpg.Pool) -> None:
    store = Store(pool)
    store.gate = asyncio.Event()
    batcher: GroupCommit[int, int] = GroupCommit(store.commit, name="t", batch=1)
    worker = asyncio.create_task(batcher.run(workers=2))
    futures = [asyncio.create_task(batcher.submit(n)) for n in (1, 2, 3)]
    await asyncio.sleep(0.05)
    batcher.close()
    store.gate.set()
    assert await asyncio.gather(*futures) == [10, 20, 30]
    await asyncio.wait_for(worker, 5)
    with pytest.raises(BatcherClosed):
        await batcher.submit(4)
    assert sorted(await rows(pool)) == [1, 2, 3]


async def test_a_cancelled_worker_fails_what_it_had_not_committed(pool: asyncpg.Pool) -> None:
    store = Store(pool)
    store.gate = asyncio.Event()
    batcher: GroupCommit[int, int] = GroupCommit(
        store.commit, name="t", batch=1, closed_error=lambda: BatcherClosed("shutting down")
    )
    worker = asyncio.create_task(batcher.run())
    futures = [asyncio.create_task(batcher.submit(n)) for n in (1, 2)]
    await asyncio.sleep(0.05)
    worker.cancel()
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(r, BatcherClosed) for r in results)  # in flight and queued alike: none hangs
    with pytest.raises(asyncio.CancelledError):
        await worker
    assert await rows(pool) == {}


async def test_an_idle_worker_returns_after_its_idle_timeout(pool: asyncpg.Pool) -> None:
    batcher: GroupCommit[int, int] = GroupCommit(Store(pool).commit, name="t")
    worker = asyncio.create_task(batcher.run(idle_timeout=0.1))
    assert await batcher.submit(1) == 10
    await asyncio.wait_for(worker, 5)  # returned by itself: the owner may passivate
    assert not batcher.closed


async def test_an_outage_fails_the_batch_at_once_and_only_content_errors_are_isolated(
    pool: asyncpg.Pool,
) -> None:
    calls: list[list[int]] = []
    outage = True

    async def commit(items: list[int]) -> list[int | Exception]:
        calls.append(list(items))
        if outage:
            raise ConnectionResetError("database unreachable")
        async with pool.acquire() as conn, conn.transaction():
            for n in items:
                await conn.fetchval("SELECT 10 / $1::int", n)  # 0 divides by zero: a DataError
        return list(items)

    batcher: GroupCommit[int, int] = GroupCommit(
        commit, name="t", batch=10, batch_error=fail_whole_batch_unless_content_error
    )
    worker = asyncio.create_task(batcher.run())
    results = await asyncio.gather(*(batcher.submit(n) for n in (1, 2, 3)), return_exceptions=True)
    assert all(isinstance(r, ConnectionResetError) for r in results)
    assert sum(len(c) for c in calls) == 3  # each item tried once: not again one by one
    outage = False
    results = await asyncio.gather(*(batcher.submit(n) for n in (1, 0, 2)), return_exceptions=True)
    assert results[0] == 1 and results[2] == 2 and isinstance(results[1], asyncpg.DivisionByZeroError)
    assert content_error(results[1]) and not content_error(ConnectionResetError())
    batcher.close()
    await worker
