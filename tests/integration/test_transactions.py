"""``run_transaction`` with ``shared_locks`` against a real PostgreSQL: the locks are held from the BEGIN
(taken in the same round trip) until the commit, the work is rolled back whole when it raises or is
cancelled, the connection goes back to the pool clean, and nothing but 64-bit integers reaches the
statement's text."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from legato.store import create_pool, run_transaction

KEY = 0x7E57_0001


async def _table(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute("DROP TABLE IF EXISTS tx_probe; CREATE TABLE tx_probe (v int)")


async def test_shared_locks_are_held_until_commit_and_shared_with_each_other(database_url: str) -> None:
    pool = await create_pool(database_url, max_size=4)
    try:
        await _table(pool)
        inside = asyncio.Event()
        release = asyncio.Event()

        async def work(conn: asyncpg.Connection) -> str:
            await conn.execute("INSERT INTO tx_probe VALUES (1)")
            inside.set()
            await release.wait()
            return "done"

        holder = asyncio.create_task(run_transaction(pool, work, shared_locks=[KEY, KEY + 1]))
        await inside.wait()
        async with pool.acquire() as other:
            held = await other.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ShareLock' AND granted"
            )
            assert held == 2
            # A second shared holder is not kept waiting; an exclusive one is.
            assert await other.fetchval("SELECT pg_try_advisory_lock_shared($1::bigint)", KEY)
            await other.execute("SELECT pg_advisory_unlock_shared($1::bigint)", KEY)
            assert not await other.fetchval("SELECT pg_try_advisory_lock($1::bigint)", KEY + 1)
            # Uncommitted: not visible yet.
            assert await other.fetchval("SELECT count(*) FROM tx_probe") == 0
            release.set()
            assert await holder == "done"
            assert await other.fetchval("SELECT count(*) FROM tx_probe") == 1
            assert await other.fetchval("SELECT pg_try_advisory_lock($1::bigint)", KEY + 1)
            await other.execute("SELECT pg_advisory_unlock($1::bigint)", KEY + 1)
    finally:
        await pool.close()


async def test_work_that_raises_or_is_cancelled_is_rolled_back_and_the_connection_comes_back_clean(
    database_url: str,
) -> None:
    pool = await create_pool(database_url, min_size=1, max_size=1)  # one connection: reused each time
    # The pool would roll back a transaction left open too, but says so to the loop: it must not have to.
    complaints: list[str] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, ctx: complaints.append(str(ctx.get("message"))))
    try:
        await _table(pool)

        async def fails(conn: asyncpg.Connection) -> None:
            await conn.execute("INSERT INTO tx_probe VALUES (1)")
            raise RuntimeError("the work failed")

        with pytest.raises(RuntimeError, match="the work failed"):
            await run_transaction(pool, fails, shared_locks=[KEY])

        started = asyncio.Event()

        async def hangs(conn: asyncpg.Connection) -> None:
            await conn.execute("INSERT INTO tx_probe VALUES (2)")
            started.set()
            await conn.execute("SELECT pg_sleep(30)")

        task = asyncio.create_task(run_transaction(pool, hangs, shared_locks=[KEY]))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM tx_probe") == 0
            locks = await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
            assert locks == 0
        # And the pool's connection still runs transactions.
        await run_transaction(
            pool, lambda c: c.execute("INSERT INTO tx_probe VALUES (3)"), shared_locks=[KEY]
        )
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT array_agg(v) FROM tx_probe") == [3]
        assert complaints == []
    finally:
        loop.set_exception_handler(None)
        await pool.close()


async def test_a_deadlock_reruns_the_whole_work(database_url: str) -> None:
    pool = await create_pool(database_url, max_size=4)
    try:
        await _table(pool)
        calls = 0

        async def deadlocks_once(conn: asyncpg.Connection) -> int:
            nonlocal calls
            calls += 1
            await conn.execute("INSERT INTO tx_probe VALUES ($1)", calls)
            if calls == 1:
                raise asyncpg.exceptions.DeadlockDetectedError("deadlock detected")
            return calls

        assert await run_transaction(pool, deadlocks_once, shared_locks=[KEY]) == 2
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT array_agg(v) FROM tx_probe") == [2]
    finally:
        await pool.close()


@pytest.mark.parametrize(
    "keys",
    [["1); DROP TABLE tx_probe; --"], [True], [2**63], [-(2**63) - 1], [1.5]],
    ids=["text", "bool", "too-large", "too-small", "float"],
)
async def test_lock_keys_must_be_64_bit_integers(database_url: str, keys: list[object]) -> None:
    pool = await create_pool(database_url, max_size=1)
    try:
        with pytest.raises(ValueError, match="not a 64-bit integer"):
            await run_transaction(pool, lambda c: c.execute("SELECT 1"), shared_locks=keys)  # type: ignore[arg-type]
    finally:
        await pool.close()


async def test_an_unknown_isolation_level_is_named(database_url: str) -> None:
    pool = await create_pool(database_url, max_size=1)
    try:
        with pytest.raises(ValueError, match="isolation: 'snapshot'"):
            await run_transaction(pool, lambda c: c.execute("SELECT 1"), isolation="snapshot")
    finally:
        await pool.close()
