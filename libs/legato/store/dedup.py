"""Durable "message applied" keys: a redelivered message finds its key and has no second effect."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg


async def mark_applied(conn: asyncpg.Connection, consumer: str, key: str) -> bool:
    """Record ``key`` in the caller's transaction; False means it was applied before (skip the effect)."""
    row = await conn.fetchval(
        "INSERT INTO applied_message (consumer, key) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING 1",
        consumer,
        key,
    )
    return row is not None


async def mark_applied_many(conn: asyncpg.Connection, consumer: str, keys: Sequence[str]) -> set[str]:
    """Batch form: returns the keys that were new (to apply now)."""
    if not keys:
        return set()
    rows = await conn.fetch(
        "INSERT INTO applied_message (consumer, key) SELECT $1, k FROM unnest($2::text[]) AS k "
        "ON CONFLICT DO NOTHING RETURNING key",
        consumer,
        list(keys),
    )
    return {r["key"] for r in rows}


async def forget_applied_before(conn: asyncpg.Connection, age_seconds: float) -> int:
    """Drop dedup keys older than any possible redelivery (bounded table growth)."""
    status: str = await conn.execute(
        "DELETE FROM applied_message WHERE applied_at < now() - make_interval(secs => $1)", age_seconds
    )
    return int(status.split()[-1])
