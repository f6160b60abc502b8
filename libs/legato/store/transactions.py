"""Retrying a whole unit of work when Postgres aborts it for a serialization failure or deadlock."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

R = TypeVar("R")

RETRYABLE = (asyncpg.exceptions.SerializationError, asyncpg.exceptions.DeadlockDetectedError)


async def run_transaction(
    pool: asyncpg.Pool,
    work: Callable[[asyncpg.Connection], Awaitable[R]],
    *,
    isolation: str = "read_committed",
    attempts: int = 5,
) -> R:
    """Run ``work(conn)`` in a transaction; on a retryable abort re-run all of it, never half.

    ``work`` must keep side effects inside the transaction (use the outbox for messages).
    """
    for attempt in range(1, attempts + 1):
        try:
            async with pool.acquire() as conn, conn.transaction(isolation=isolation):
                return await work(conn)
        except RETRYABLE:
            if attempt == attempts:
                raise
            await asyncio.sleep(random.uniform(0, 0.01 * 2**attempt))
    raise AssertionError("unreachable")
