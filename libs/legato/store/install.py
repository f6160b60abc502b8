"""Settings every process of one install must share, stored in Postgres by the first process."""

from __future__ import annotations

import asyncpg

from legato.store.migrations import MigrationError


class InstallMismatch(MigrationError):
    """This process was started with a setting that disagrees with the install's stored one."""


async def check_partitions(conn: asyncpg.Connection, partitions: int) -> None:
    """Record the partition count at the first start; refuse a process that disagrees with it.

    Two processes hashing workflows over different partition counts would each believe they own the
    same workflow under different leases, and both drive it."""
    stored = await conn.fetchval(
        "WITH ins AS (INSERT INTO install_setting (key, value) VALUES ('partitions', $1) "
        "ON CONFLICT (key) DO NOTHING RETURNING value) "
        "SELECT value FROM ins UNION ALL SELECT value FROM install_setting WHERE key = 'partitions' LIMIT 1",
        str(partitions),
    )
    if stored is None:  # a concurrent first start inserted it after our snapshot: read it again
        stored = await conn.fetchval("SELECT value FROM install_setting WHERE key = 'partitions'")
    if stored is not None and stored != str(partitions):
        raise InstallMismatch(
            f"LEGATO_PARTITIONS is {partitions} but this install uses {stored} partitions "
            f"(recorded in Postgres table install_setting at its first start); start every service with "
            f"LEGATO_PARTITIONS={stored}"
        )
