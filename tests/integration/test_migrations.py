"""The migration runner against a real Postgres: a no-transaction migration builds its indexes while
the table goes on being written, survives a crashed build, refuses statements it cannot make safe,
and processes queued for the migration lock do not deadlock with its build; and the shipped 0101 on
a database as the release before left it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

from legato.store.migrations import NO_TRANSACTION, Migration, MigrationError, load_migrations, migrate
from tests.support.stack import until

TABLE = Migration(1, "table", "CREATE TABLE t (id serial PRIMARY KEY, v integer NOT NULL);")
BUILD = Migration(2, "build", f"{NO_TRANSACTION}\nCREATE INDEX CONCURRENTLY IF NOT EXISTS t_v ON t (v);\n")
PLAIN = Migration(2, "plain", "CREATE INDEX t_plain ON t (v);")  # in the migration's transaction


@asynccontextmanager
async def _connections(url: str, n: int) -> AsyncIterator[list[asyncpg.Connection]]:
    """``n`` connections to ``url``, closed afterwards."""
    conns = [await asyncpg.connect(url) for _ in range(n)]
    try:
        yield conns
    finally:
        for conn in conns:
            await conn.close()


async def _building(watch: asyncpg.Connection, index: str) -> bool:
    """Whether a build of ``index`` is in progress, waiting for an older transaction to end."""
    return bool(
        await watch.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE $1 AND wait_event_type = 'Lock'",
            f"CREATE %INDEX %{index}%",
        )
    )


async def _valid(conn: asyncpg.Connection, index: str) -> bool | None:
    return await conn.fetchval("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)", index)


async def test_a_no_transaction_migration_builds_while_the_table_is_written(empty_database_url: str) -> None:
    async with _connections(empty_database_url, 3) as (runner, holder, writer):
        await migrate(runner, migrations=[TABLE])
        # An open write transaction: the build waits for it; a new insert must not wait for the build.
        holder_tx = holder.transaction()
        await holder_tx.start()
        await holder.execute("INSERT INTO t (v) VALUES (1)")
        await writer.execute("SET lock_timeout = '2s'")

        # What a plain CREATE INDEX in the migration's transaction does: the insert waits, then fails.
        plain = asyncio.create_task(migrate(runner, migrations=[TABLE, PLAIN]))
        await until(lambda: _building(writer, "t_plain"), 10.0, "the plain build waiting for the holder")
        with pytest.raises(asyncpg.exceptions.LockNotAvailableError):
            await writer.execute("INSERT INTO t (v) VALUES (2)")
        await holder_tx.commit()
        assert await plain == [2]

        holder_tx = holder.transaction()
        await holder_tx.start()
        await holder.execute("INSERT INTO t (v) VALUES (3)")
        build = asyncio.create_task(
            migrate(runner, migrations=[TABLE, PLAIN, Migration(3, "build", BUILD.sql)])
        )
        await until(lambda: _building(writer, "t_v"), 10.0, "the concurrent build waiting for the holder")
        await writer.execute("INSERT INTO t (v) VALUES (4)")  # not held back
        assert not build.done()
        await holder_tx.commit()
        assert await build == [3]
        assert await _valid(runner, "t_v") is True
        assert await runner.fetchval("SELECT count(*) FROM t") == 3
        assert await runner.fetchval("SELECT max(version) FROM schema_migration") == 3


async def test_an_index_a_crashed_build_left_invalid_is_built_again(empty_database_url: str) -> None:
    async with _connections(empty_database_url, 1) as (conn,):
        await migrate(conn, migrations=[TABLE])
        await conn.execute("INSERT INTO t (v) VALUES (1), (1)")
        # A concurrent build that fails half way leaves its index behind, invalid.
        with pytest.raises(asyncpg.exceptions.UniqueViolationError):
            await conn.execute("CREATE UNIQUE INDEX CONCURRENTLY t_u ON t (v)")
        assert await _valid(conn, "t_u") is False
        await conn.execute("DELETE FROM t WHERE id = (SELECT max(id) FROM t)")
        unique = Migration(
            2, "unique", f"{NO_TRANSACTION}\nCREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS t_u ON t (v);"
        )
        assert await migrate(conn, migrations=[TABLE, unique]) == [2]
        assert await _valid(conn, "t_u") is True
        with pytest.raises(asyncpg.exceptions.UniqueViolationError):
            await conn.execute("INSERT INTO t (v) VALUES (1)")
        # A run that died after its statements but before recording the version is simply finished.
        again = Migration(3, "again", unique.sql.replace("t_u", "t_u2"))
        await conn.execute("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS t_u2 ON t (v)")
        assert await migrate(conn, migrations=[TABLE, unique, again]) == [3]
        assert await _valid(conn, "t_u2") is True


async def test_a_no_transaction_migration_that_could_not_be_rerun_is_refused_before_anything_runs(
    empty_database_url: str,
) -> None:
    async with _connections(empty_database_url, 1) as (conn,):
        for bad in (
            "CREATE INDEX t_v ON t (v);",  # a plain build: blocks writes, cannot be re-run
            "CREATE INDEX CONCURRENTLY t_v ON t (v);",  # not IF NOT EXISTS: a re-run fails
            "DROP INDEX CONCURRENTLY t_v;",
            "ALTER TABLE t ADD COLUMN w integer;",
        ):
            with pytest.raises(MigrationError, match=r"0002_bad, statement 2 \("):
                await migrate(
                    conn,
                    migrations=[
                        TABLE,
                        Migration(2, "bad", f"{NO_TRANSACTION}\nDROP INDEX CONCURRENTLY IF EXISTS x;\n{bad}"),
                    ],
                )
        assert await conn.fetchval("SELECT to_regclass('t')") is None  # not even the first migration


async def test_processes_waiting_for_the_lock_do_not_deadlock_a_concurrent_build(
    empty_database_url: str,
) -> None:
    """The build waits for every statement older than it; a process inside ``pg_advisory_lock`` for
    the lock the build's session holds would be one (Postgres aborts one of the two)."""
    async with _connections(empty_database_url, 5) as (first, holder, watch, *others):
        await migrate(first, migrations=[TABLE])
        holder_tx = holder.transaction()
        await holder_tx.start()
        await holder.execute("INSERT INTO t (v) VALUES (1)")
        build = asyncio.create_task(migrate(first, migrations=[TABLE, BUILD]))
        await until(lambda: _building(watch, "t_v"), 10.0, "the build waiting for the holder")
        waiting = [asyncio.create_task(migrate(c, migrations=[TABLE, BUILD])) for c in others]
        await asyncio.sleep(0.5)  # they are asking for the lock
        await holder_tx.commit()
        results = await asyncio.wait_for(asyncio.gather(build, *waiting), 30)
        assert results == [[2], [], []]
        assert await _valid(watch, "t_v") is True


async def test_0101_replaces_the_listing_indexes_of_a_database_that_has_runs(empty_database_url: str) -> None:
    """The shipped no-transaction migration, on a database as the release before left it."""
    async with _connections(empty_database_url, 1) as (conn,):
        shipped = load_migrations()
        assert not next(m for m in shipped if m.version == 101).in_transaction
        await migrate(conn, up_to=100)
        await conn.execute(
            "INSERT INTO workflow_instance (id, workflow_id, version, trigger_key, trigger, status, "
            "parent_instance_id) SELECT 'r' || i, 'wf', 1, 'k' || i, '{}', 'succeeded', "
            "CASE WHEN i % 10 = 0 THEN NULL ELSE 'r0' END FROM generate_series(0, 999) AS i"
        )
        assert await migrate(conn) == [m.version for m in shipped if m.version > 100]
        indexes = {
            r["indexname"]: r["indexdef"]
            for r in await conn.fetch(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'workflow_instance'"
            )
        }
        assert "workflow_instance_recent" not in indexes and "workflow_instance_status" not in indexes
        for name in (
            "workflow_instance_top_by_workflow",
            "workflow_instance_top_by_status",
            "workflow_instance_top_recent",
        ):
            assert "WHERE (parent_instance_id IS NULL)" in indexes[name]
            assert await _valid(conn, name) is True
