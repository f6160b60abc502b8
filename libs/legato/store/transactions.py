"""Retrying a whole unit of work when Postgres aborts it for a serialization failure or deadlock."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import asyncpg

R = TypeVar("R")

RETRYABLE = (asyncpg.exceptions.SerializationError, asyncpg.exceptions.DeadlockDetectedError)

_ISOLATION = {
    "read_committed": "READ COMMITTED",
    "repeatable_read": "REPEATABLE READ",
    "serializable": "SERIALIZABLE",
}
_BIGINT = range(-(2**63), 2**63)


async def run_transaction(
    pool: asyncpg.Pool,
    work: Callable[[asyncpg.Connection], Awaitable[R]],
    *,
    isolation: str = "read_committed",
    attempts: int = 5,
    shared_locks: Sequence[int] = (),
) -> R:
    """Run ``work(conn)`` in a transaction; on a retryable abort re-run all of it, never half.

    ``work`` must keep side effects inside the transaction (use the outbox for messages).
    ``shared_locks``: advisory lock keys the transaction holds shared (``pg_advisory_xact_lock_shared``,
    in the order given) before ``work`` runs; they are taken in the same round trip as the BEGIN.
    """
    if isolation not in _ISOLATION:
        raise ValueError(f"isolation: {isolation!r} is not one of {sorted(_ISOLATION)}")
    begin = _begin_locked(isolation, shared_locks) if shared_locks else None
    for attempt in range(1, attempts + 1):
        try:
            async with pool.acquire() as conn:
                if begin is None:
                    async with conn.transaction(isolation=isolation):
                        return await work(conn)
                return await _in_transaction(conn, begin, work)
        except RETRYABLE:
            if attempt == attempts:
                raise
            await asyncio.sleep(random.uniform(0, 0.01 * 2**attempt))
    raise AssertionError("unreachable")


def _begin_locked(isolation: str, keys: Sequence[int]) -> str:
    """BEGIN and the shared locks as one simple-protocol query (one round trip instead of two).

    The keys are written into the text, so only integers in bigint's range are accepted: nothing else
    can reach it."""
    for k in keys:
        if type(k) is not int or k not in _BIGINT:
            raise ValueError(f"advisory lock key {k!r}: not a 64-bit integer")
    listed = ",".join(str(k) for k in keys)
    return (
        f"BEGIN ISOLATION LEVEL {_ISOLATION[isolation]};"
        f" SELECT pg_advisory_xact_lock_shared(k) FROM unnest('{{{listed}}}'::bigint[]) AS k"
    )


async def _in_transaction(
    conn: asyncpg.Connection, begin: str, work: Callable[[asyncpg.Connection], Awaitable[R]]
) -> R:
    """``work`` between ``begin`` and COMMIT; rolled back if it raises (or is cancelled)."""
    await conn.execute(begin)
    try:
        result = await work(conn)
    except BaseException:
        if not conn.is_closed() and conn.is_in_transaction():
            try:
                await conn.execute("ROLLBACK")
            except Exception:
                conn.terminate()  # its state is unknown: the pool replaces it
        raise
    await conn.execute("COMMIT")
    return result
