"""Plain SQL migrations, versioned by file name, applied at start under an advisory lock.

Files are ``NNNN_name.sql`` in ``legato/store/migrations``. Each is applied once, in order, in its own
transaction, and recorded with a checksum; a changed file that was already applied is an error, so a
database never silently diverges from the code. Safe when several services start at once: they queue
on the lock and the later ones find nothing to do.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from legato.telemetry import get_logger

log = get_logger("legato.store")

# Any constant works; it only has to be the same in every Legato process.
MIGRATION_LOCK_KEY = 0x1E6A70_0001

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """The database cannot be brought to this code's schema (a changed, unknown or misnamed migration)."""


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file of ``legato/store/migrations``."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    """Every migration shipped with the package, by version."""
    folder = resources.files("legato.store") / "migrations"
    found: list[Migration] = []
    for entry in folder.iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text()))
        elif entry.name.endswith(".sql"):
            raise MigrationError(f"migration file {entry.name}: name must be NNNN_name.sql")
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {versions}")
    return found


async def migrate(conn: asyncpg.Connection, *, up_to: int | None = None) -> list[int]:
    """Apply pending migrations (those up to version ``up_to`` only, when given: a database as an
    older release left it, for tests of a migration); returns the versions applied by this call."""
    applied_now: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migration (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                checksum   text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migration")
        done = {r["version"]: r for r in rows}
        for mig in load_migrations():
            if up_to is not None and mig.version > up_to:
                break
            have = done.get(mig.version)
            if have is not None:
                if have["checksum"] != mig.checksum:
                    raise MigrationError(
                        f"migration {mig.version:04d}_{mig.name} changed after it was applied "
                        f"(checksum {have['checksum'][:12]} in the database, {mig.checksum[:12]} in the code)"
                    )
                continue
            async with conn.transaction():
                await conn.execute(mig.sql)
                await conn.execute(
                    "INSERT INTO schema_migration (version, name, checksum) VALUES ($1, $2, $3)",
                    mig.version,
                    mig.name,
                    mig.checksum,
                )
            applied_now.append(mig.version)
            log.info("migration_applied", version=mig.version, name=mig.name)
        newer = [v for v in done if v > max((m.version for m in load_migrations()), default=0)]
        if newer:
            raise MigrationError(
                f"database has migrations {sorted(newer)} this code does not know; upgrade Legato"
            )
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied_now


async def migrate_url(url: str) -> list[int]:
    """Connect to ``url``, apply the missing migrations; their versions."""
    conn = await asyncpg.connect(url)
    try:
        return await migrate(conn)
    finally:
        await conn.close()
