"""How long an upgrade's index build holds the run table's writes back.

Starts a durable PostgreSQL, brings a database to the schema before migration 0101, fills
``workflow_instance`` with ``-n`` runs (a tenth of them top-level, the rest child runs, as foreach
iterations leave them), then applies 0101 (the listing's indexes of top-level runs) while a writer
inserts runs one at a time, as the API does. Twice, on a fresh database each: its statements in one
transaction (how a migration ran before 0101 was marked ``-- legato: no transaction``) and as the
runner applies it now (each index built concurrently). Prints the migration's time and the writer's
inserts during it: how many, p50, p99 and the longest, in ms.

    python bench/migration.py -n 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).parent))

from _servers import percentile
from legato.devstack import EmbeddedPostgres
from legato.store.migrations import NO_TRANSACTION, Migration, load_migrations, migrate

TARGET = 101


async def fill(conn: asyncpg.Connection, n: int) -> None:
    """``n`` finished runs, one in ten top-level (the rest its children), in batches of 100,000."""
    for start in range(0, n, 100_000):
        await conn.execute(
            """
            INSERT INTO workflow_instance (id, workflow_id, version, trigger_key, trigger, status,
                                           parent_instance_id, parent_step_id, parent_iteration)
            SELECT 'r' || i, 'wf' || (i % 20), 1, 'k' || i, '{}', 'succeeded',
                   CASE WHEN i % 10 = 0 THEN NULL ELSE 'r' || (i - i % 10) END,
                   CASE WHEN i % 10 = 0 THEN NULL ELSE 'fan' END,
                   CASE WHEN i % 10 = 0 THEN NULL ELSE i % 10 END
            FROM generate_series($1::bigint, $2::bigint) AS i
            """,
            start,
            min(start + 100_000, n) - 1,
        )
    await conn.execute("VACUUM ANALYZE workflow_instance")


async def writer(conn: asyncpg.Connection, stop: asyncio.Event, took: list[float]) -> None:
    """Insert top-level runs one at a time until ``stop``; each insert's time (ms) into ``took``."""
    i = 0
    while not stop.is_set():
        i += 1
        began = time.perf_counter()
        await conn.execute(
            "INSERT INTO workflow_instance (id, workflow_id, version, trigger_key, trigger, status) "
            "VALUES ($1, 'wf-live', 1, $1, '{}', 'queued')",
            f"live-{i}",
        )
        took.append((time.perf_counter() - began) * 1000)


async def one(url: str, n: int, target: Migration) -> tuple[float, list[float]]:
    """Apply ``target`` to a database at the version before it holding ``n`` runs, with a writer
    beside it; the migration's time (s) and the writer's inserts' times (ms) while it ran."""
    conn = await asyncpg.connect(url)
    live = await asyncpg.connect(url)
    try:
        before = [m for m in load_migrations() if m.version < target.version]
        await migrate(conn, migrations=before)
        await fill(conn, n)
        stop, took = asyncio.Event(), []
        task = asyncio.create_task(writer(live, stop, took))
        await asyncio.sleep(0.5)
        took.clear()
        began = time.perf_counter()
        await migrate(conn, migrations=[*before, target])
        elapsed = time.perf_counter() - began
        stop.set()
        await task
        return elapsed, took
    finally:
        await conn.close()
        await live.close()


def in_one_transaction(mig: Migration) -> Migration:
    """The same statements as a plain migration (one transaction, no CONCURRENTLY)."""
    sql = mig.sql.replace(NO_TRANSACTION, "-- (in one transaction)").replace(" CONCURRENTLY", "")
    return Migration(mig.version, mig.name, sql)


async def main(n: int) -> None:
    target = next(m for m in load_migrations() if m.version == TARGET)
    with tempfile.TemporaryDirectory(prefix="legato-bench-migration-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg", preferred_port=0, durable=True).start()
        try:
            admin = await asyncpg.connect(pg.url("postgres"))
            print(f"migration {TARGET:04d}_{target.name} on {n:,} runs, a writer inserting runs beside it:")
            for label, mig in (
                ("in one transaction", in_one_transaction(target)),
                ("as applied now", target),
            ):
                name = f"m{len(label)}"
                await admin.execute(f'CREATE DATABASE "{name}"')
                elapsed, took = await one(pg.url(name), n, mig)
                print(
                    f"  {label:<20} {elapsed:6.2f} s; inserts during it: {len(took):6d}, "
                    f"p50 {percentile(took, 50):7.2f} ms, p99 {percentile(took, 99):8.2f} ms, "
                    f"longest {max(took, default=0.0):8.2f} ms"
                )
            await admin.close()
        finally:
            pg.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=1_000_000, help="runs in the table (default 1,000,000)")
    args = parser.parse_args()
    asyncio.run(main(args.n))
