"""Registering a workflow's signal triggers, shared by the trigger service (writes) and the signal router
(reads).

Registration runs in the transaction that activates (or deactivates) a version, under an exclusive
advisory lock that every router batch holds shared while it reads the trigger table: a signal is either
applied before the registration (and does not count for the new trigger) or after it (and sees it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime

import asyncpg

# Any constant works; it only has to be the same in every Legato process.
SIGNAL_TRIGGER_LOCK_KEY = 0x1E6A70_0009


def signal_name_lock_key(name: str) -> int:
    """The advisory lock key of one signal name (routers hold it shared, a wait registration exclusive)."""
    digest = hashlib.blake2b(f"legato.signal:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def lock_signal_triggers(conn: asyncpg.Connection, *, shared: bool) -> None:
    """Hold the registration lock until the transaction ends (shared: readers; exclusive: writers)."""
    fn = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    await conn.execute(f"SELECT {fn}($1)", SIGNAL_TRIGGER_LOCK_KEY)


async def register_signal_triggers(
    conn: asyncpg.Connection,
    workflow_id: str,
    version: int,
    triggers: Sequence[tuple[str, datetime | None]],
) -> None:
    """Make ``triggers`` (``(trigger id, since or None)``) the workflow's active signal triggers.

    A trigger that stays active keeps its registration time; one that is new or comes back after a
    deactivation counts signals published from now on (or from its ``since``).
    """
    await lock_signal_triggers(conn, shared=False)
    ids = [t for t, _ in triggers]
    await conn.execute(
        "UPDATE signal_trigger SET active = false, updated_at = now() "
        "WHERE workflow_id = $1 AND active AND NOT (trigger_id = ANY($2::text[]))",
        workflow_id,
        ids,
    )
    if triggers:
        await conn.execute(
            """
            INSERT INTO signal_trigger AS t (workflow_id, trigger_id, version, since, registered_at, active)
            SELECT $1, u.trigger_id, $2, u.since, clock_timestamp(), true
            FROM unnest($3::text[], $4::timestamptz[]) AS u (trigger_id, since)
            ON CONFLICT (workflow_id, trigger_id) DO UPDATE SET
                version = EXCLUDED.version,
                since = EXCLUDED.since,
                registered_at = CASE WHEN t.active THEN t.registered_at ELSE EXCLUDED.registered_at END,
                active = true,
                updated_at = now()
            """,
            workflow_id,
            version,
            ids,
            [s for _, s in triggers],
        )
    await conn.execute("UPDATE signal_trigger_epoch SET epoch = epoch + 1")


async def deactivate_signal_triggers(conn: asyncpg.Connection, workflow_id: str) -> None:
    """The workflow was deactivated: its signal triggers stop firing (partial tuples are kept)."""
    await lock_signal_triggers(conn, shared=False)
    await conn.execute(
        "UPDATE signal_trigger SET active = false, updated_at = now() WHERE workflow_id = $1 AND active",
        workflow_id,
    )
    await conn.execute("UPDATE signal_trigger_epoch SET epoch = epoch + 1")
