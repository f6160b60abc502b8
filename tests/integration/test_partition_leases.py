"""Partition leases against a real PostgreSQL: a scheduler process that stopped heartbeating (SIGSTOP,
a frozen VM) cannot keep row locks for ever, whatever state its session was left in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

from legato.scheduler.leases import PartitionLeaser, session_name
from legato.store import create_pool
from legato.store.outbox import TAKE_EVENTS


async def nothing(_partition: int) -> None:
    return None


async def session(url: str, incarnation: str) -> asyncpg.Connection:
    return await asyncpg.connect(url, server_settings={"application_name": session_name(incarnation)})


@asynccontextmanager
async def leasing(database_url: str, pool: asyncpg.Pool) -> AsyncIterator[PartitionLeaser]:
    """A replica "me" (lease time 1 s) balancing in the background."""
    leaser = PartitionLeaser(
        pool,
        partitions=4,
        replica="me",
        ttl=1.0,
        renew_every=0.2,
        on_acquired=nothing,
        on_lost=nothing,
        database_url=database_url,
        incarnation="inc-me",
    )
    task = asyncio.create_task(leaser.run())
    try:
        yield leaser
    finally:
        await leaser.shutdown()
        await task


async def alive(conn: asyncpg.Connection) -> bool:
    try:
        await asyncio.wait_for(conn.fetchval("SELECT 1"), timeout=5)
        return True
    except Exception:  # terminated: asyncpg reports it in several ways depending on timing
        return False


async def test_the_transactions_of_a_replica_that_stopped_heartbeating_are_ended(database_url: str) -> None:
    admin = await asyncpg.connect(database_url)
    await admin.execute(
        "INSERT INTO scheduler_replica (name, incarnation, heartbeat_at) VALUES "
        "('stopped', 'inc-stopped', clock_timestamp() - interval '1 hour'), "
        "('busy', 'inc-busy', clock_timestamp() + interval '1 hour')"
    )
    # The stopped replica's transaction holds a lock that a live process waits for.
    stuck = await session(database_url, "inc-stopped")
    await stuck.execute("BEGIN; SELECT pg_advisory_xact_lock(7)")
    idle = await session(database_url, "inc-stopped")  # same process, not in a transaction: harmless
    # A live replica's long transaction (its heartbeat is fresh) is never touched.
    busy = await session(database_url, "inc-busy")
    await busy.execute("BEGIN; SELECT pg_advisory_xact_lock(8)")
    # Nor one of a process that has not heartbeated yet (a new version migrating at start).
    starting = await session(database_url, "inc-starting")
    await starting.execute("BEGIN; SELECT pg_advisory_xact_lock(10)")
    waiter = await asyncpg.connect(database_url)
    waiting = asyncio.create_task(waiter.execute("SELECT pg_advisory_lock(7)"))
    await asyncio.sleep(0.5)
    assert not waiting.done()

    pool = await create_pool(database_url, max_size=2, application_name=session_name("inc-me"))
    try:
        async with leasing(database_url, pool):
            await asyncio.wait_for(waiting, timeout=10)  # the lock came free: its holder was ended
            assert not await alive(stuck)
            assert await alive(idle)
            assert await alive(busy)
            assert await alive(starting)
            assert await busy.fetchval("SELECT pg_advisory_xact_lock(8) IS NOT NULL")  # still in it
            # Its own sessions stay: the leaser's pool is named after its incarnation too.
            async with pool.acquire() as conn, conn.transaction():
                await asyncio.sleep(1.5)
                assert await conn.fetchval("SELECT 1") == 1
    finally:
        waiting.cancel()
        for conn in (idle, busy, starting, waiter, admin, stuck):
            if not conn.is_closed():
                await conn.close()
        await pool.close()


async def test_a_stopped_replicas_session_holding_the_event_relays_turn_is_ended(database_url: str) -> None:
    """The lifecycle-event relays take turns under a session advisory lock, held outside any transaction
    from a round's read (``event_outbox_take``) to its delete. A replica stopped in between would hold
    every replica's events back for as long as it stays stopped: its session is ended like a stopped
    transaction, the lock comes free and another relay takes the same rows. A stopped replica's idle
    session without a lock, and a live replica's session holding the lock, are left alone."""
    admin = await asyncpg.connect(database_url)
    await admin.execute(
        "INSERT INTO scheduler_replica (name, incarnation, heartbeat_at) VALUES "
        "('stopped', 'inc-stopped', clock_timestamp() - interval '1 hour'), "
        "('busy', 'inc-busy', clock_timestamp() + interval '1 hour')"
    )
    await admin.execute(
        "INSERT INTO event_outbox (subjects, payloads, msg_ids) VALUES (ARRAY['s'], ARRAY['p'::bytea], ARRAY['m'])"
    )
    stuck = await session(database_url, "inc-stopped")
    taken = await stuck.fetch(TAKE_EVENTS, 11, 16)
    assert len(taken) == 1  # it holds the relays' lock now, idle, outside a transaction
    idle = await session(database_url, "inc-stopped")
    busy = await session(database_url, "inc-busy")
    await busy.execute("SELECT pg_advisory_lock(12)")
    waiter = await asyncpg.connect(database_url)
    waiting = asyncio.create_task(waiter.fetch(TAKE_EVENTS, 11, 16))
    await asyncio.sleep(0.5)
    assert not waiting.done()

    pool = await create_pool(database_url, max_size=2, application_name=session_name("inc-me"))
    try:
        async with leasing(database_url, pool):
            rows = await asyncio.wait_for(waiting, timeout=10)  # the lock came free: its holder was ended
            assert [r["id"] for r in rows] == [r["id"] for r in taken]  # the same row, not lost
            assert not await alive(stuck)
            assert await alive(idle)
            assert await alive(busy)
            assert (
                await busy.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
                )
                == 1
            )
    finally:
        waiting.cancel()
        for conn in (idle, busy, waiter, admin, stuck):
            if not conn.is_closed():
                await conn.close()
        await pool.close()


@pytest.mark.parametrize("state", ["idle in transaction", "active"])
async def test_a_session_stopped_mid_statement_is_ended_too(database_url: str, state: str) -> None:
    """``active`` is what a process stopped between two messages of one statement leaves (Postgres's idle
    timeouts do not apply there): made here by a statement that waits on a lock the stopped one holds."""
    admin = await asyncpg.connect(database_url)
    await admin.execute(
        "INSERT INTO scheduler_replica (name, incarnation, heartbeat_at) "
        "VALUES ('stopped', 'inc-stopped', clock_timestamp() - interval '1 hour')"
    )
    holder = await asyncpg.connect(database_url)
    await holder.execute("SELECT pg_advisory_lock(9)")
    stuck = await session(database_url, "inc-stopped")
    await stuck.execute("BEGIN; SELECT 1")
    running = None
    if state == "active":
        running = asyncio.create_task(stuck.execute("SELECT pg_advisory_xact_lock(9)"))
    await asyncio.sleep(1.2)
    row = await admin.fetchrow(
        "SELECT state FROM pg_stat_activity WHERE application_name = $1", session_name("inc-stopped")
    )
    assert row is not None and row["state"] == state
    pool = await create_pool(database_url, max_size=2, application_name=session_name("inc-me"))
    try:
        async with leasing(database_url, pool):
            for _ in range(100):
                left = await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                    session_name("inc-stopped"),
                )
                if left == 0:
                    break
                await asyncio.sleep(0.1)
            assert left == 0
    finally:
        if running is not None:
            await asyncio.gather(running, return_exceptions=True)
        for conn in (holder, admin, stuck):
            if not conn.is_closed():
                await conn.close()
        await pool.close()
