"""Plain SQL migrations, versioned by file name, applied at start under an advisory lock.

Files are ``NNNN_name.sql`` in ``legato/store/migrations``. Each is applied once, in order, in its own
transaction, and recorded with a checksum; a changed file that was already applied is an error, so a
database never silently diverges from the code. Safe when several services start at once: they queue
on the lock and the later ones find nothing to do.

A migration whose first line is ``-- legato: no transaction`` builds or drops indexes of tables that
are written while it runs (an upgrade of a live install): it holds only ``CREATE [UNIQUE] INDEX
CONCURRENTLY IF NOT EXISTS`` and ``DROP INDEX CONCURRENTLY IF EXISTS`` statements, each run on its
own, so writes go on during the build instead of waiting for the transaction (a plain ``CREATE
INDEX`` blocks every insert and update of its table until it commits). Re-run after a crash, it
skips what was done, and an index a crash left invalid is dropped and built again.

The processes waiting for the migration lock ask for it every ``LOCK_POLL`` seconds instead of
waiting inside ``pg_advisory_lock``: a ``CREATE INDEX CONCURRENTLY`` waits for every statement
older than its build to end, and a statement waiting for the lock its own session holds would never
end (Postgres reports the deadlock and aborts one of them).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import asyncpg

from legato.telemetry import get_logger

log = get_logger("legato.store")

# Any constant works; it only has to be the same in every Legato process.
MIGRATION_LOCK_KEY = 0x1E6A70_0001

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
NO_TRANSACTION = "-- legato: no transaction"
_CREATE_CONCURRENTLY = re.compile(
    r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+IF\s+NOT\s+EXISTS\s+([a-z_][a-z0-9_]*)\s+ON\s", re.I
)
_DROP_CONCURRENTLY = re.compile(r"DROP\s+INDEX\s+CONCURRENTLY\s+IF\s+EXISTS\s+([a-z_][a-z0-9_]*)", re.I)
LOCK_POLL = 0.05  # seconds between two asks for the migration lock
LOCK_WAIT = 3600.0  # how long a process waits for another's migrations before it gives up
# How long one migration statement may take (a pool's command timeout, 60 s, would cut an index build
# on a large table short, and the next start would try again from the beginning).
STATEMENT_WAIT = LOCK_WAIT


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

    @property
    def in_transaction(self) -> bool:
        """False for a migration marked ``-- legato: no transaction`` on its first line."""
        return self.sql.lstrip().partition("\n")[0].strip() != NO_TRANSACTION

    def statements(self) -> list[str]:
        """The statements of a no-transaction migration, one by one; raises naming the first that is
        not an index built or dropped concurrently and idempotently."""
        code = "\n".join(line for line in self.sql.splitlines() if not line.lstrip().startswith("--"))
        found = [" ".join(part.split()) for part in code.split(";") if part.strip()]
        for n, stmt in enumerate(found, 1):
            if not (_CREATE_CONCURRENTLY.match(stmt) or _DROP_CONCURRENTLY.fullmatch(stmt)):
                raise MigrationError(
                    f"migration {self.version:04d}_{self.name}, statement {n} ({stmt[:60]!r}): a no-transaction "
                    "migration holds only CREATE [UNIQUE] INDEX CONCURRENTLY IF NOT EXISTS and DROP INDEX "
                    "CONCURRENTLY IF EXISTS statements"
                )
        return found


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


async def migrate(
    conn: asyncpg.Connection,
    *,
    up_to: int | None = None,
    migrations: Sequence[Migration] | None = None,
    lock_wait: float = LOCK_WAIT,
) -> list[int]:
    """Apply pending migrations (those up to version ``up_to`` only, when given: a database as an
    older release left it, for tests of a migration); returns the versions applied by this call.
    ``migrations``: these instead of the package's (tests of the runner)."""
    known = load_migrations() if migrations is None else sorted(migrations, key=lambda mig: mig.version)
    for mig in known:
        if not mig.in_transaction:
            mig.statements()  # a malformed one fails before anything is applied
    applied_now: list[int] = []
    await _take_lock(conn, lock_wait)
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
        for mig in known:
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
            record = "INSERT INTO schema_migration (version, name, checksum) VALUES ($1, $2, $3)"
            if mig.in_transaction:
                async with conn.transaction():
                    await conn.execute(mig.sql, timeout=STATEMENT_WAIT)
                    await conn.execute(record, mig.version, mig.name, mig.checksum)
            else:
                for stmt in mig.statements():
                    await _run_concurrently(conn, stmt)
                await conn.execute(record, mig.version, mig.name, mig.checksum)
            applied_now.append(mig.version)
            log.info("migration_applied", version=mig.version, name=mig.name)
        newer = [v for v in done if v > max((m.version for m in known), default=0)]
        if newer:
            raise MigrationError(
                f"database has migrations {sorted(newer)} this code does not know; upgrade Legato"
            )
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied_now


async def _take_lock(conn: asyncpg.Connection, wait: float) -> None:
    """The migration lock, asked for every ``LOCK_POLL`` s (see the module's doc) for at most ``wait`` s."""
    deadline = time.monotonic() + wait
    logged = False
    while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK_KEY):
        if time.monotonic() >= deadline:
            raise MigrationError(f"another process held the migration lock for over {wait:.0f} s")
        if not logged:
            log.info("migration_lock_waiting")
            logged = True
        await asyncio.sleep(LOCK_POLL)


async def _run_concurrently(conn: asyncpg.Connection, stmt: str) -> None:
    """One statement of a no-transaction migration; an index of the same name that a crashed build
    left invalid is dropped first, so that ``IF NOT EXISTS`` does not keep it."""
    created = _CREATE_CONCURRENTLY.match(stmt)
    if created is not None:
        name = created.group(1).lower()
        valid = await conn.fetchval(
            "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass($1)", name
        )
        if valid is False:
            log.warning("migration_invalid_index_dropped", index=name)
            await conn.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"', timeout=STATEMENT_WAIT)
    await conn.execute(stmt, timeout=STATEMENT_WAIT)


async def migrate_url(url: str) -> list[int]:
    """Connect to ``url``, apply the missing migrations; their versions."""
    conn = await asyncpg.connect(url)
    try:
        return await migrate(conn)
    finally:
        await conn.close()
