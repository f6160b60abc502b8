"""Batch lookups by key probe an index per key in every plan, generic ones included.

asyncpg prepares every statement and Postgres reuses a generic plan after five executions. A service
prepares its statements while the tables are still empty, and for ``WHERE id = ANY($1)`` the cheaper
generic plan is then a sequential scan, kept while the table grows (``legato.store.keys``). These
statements run on every API start batch and every scheduler batch that starts runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from legato.scheduler.repository import EXISTING_RUNS
from legato.trigger.start_api import _READ_STARTS

# The statements as they were: what the generic plan of each turns into on empty tables.
OLD_EXISTING_RUNS = "SELECT id FROM workflow_instance WHERE id = ANY($1::text[])"
OLD_READ_STARTS = (
    "SELECT true AS is_run, i.id, i.status, i.run_params, i.version, a.request_digest "
    "FROM workflow_instance i LEFT JOIN accepted_start a ON a.instance_id = i.id "
    "WHERE i.id = ANY($1::text[]) UNION ALL "
    "SELECT false, instance_id, NULL, NULL, NULL, request_digest FROM accepted_start "
    "WHERE instance_id = ANY($1::text[]) ORDER BY 1 DESC"
)


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(database_url)
    yield c
    await c.close()


async def generic_plan(conn: asyncpg.Connection, sql: str) -> str:
    """The plan Postgres keeps for ``sql`` once it stops planning per execution (tables empty)."""
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    await conn.execute(f"PREPARE lookup AS {sql}")
    try:
        rows = await conn.fetch("EXPLAIN EXECUTE lookup('{r1,r2}')")
    finally:
        await conn.execute("DEALLOCATE lookup")
        await conn.execute("RESET plan_cache_mode")
    return "\n".join(r[0] for r in rows)


@pytest.mark.parametrize(
    ("sql", "old"),
    [(EXISTING_RUNS, OLD_EXISTING_RUNS), (_READ_STARTS, OLD_READ_STARTS)],
    ids=["runs", "starts"],
)
async def test_a_batch_lookup_probes_the_index_in_its_generic_plan(
    conn: asyncpg.Connection, sql: str, old: str
) -> None:
    assert "Seq Scan on workflow_instance" in await generic_plan(conn, old)  # what it fixes
    plan = await generic_plan(conn, sql)
    assert "Seq Scan" not in plan, plan
    assert "Index" in plan, plan


async def test_batch_lookups_find_what_the_any_form_found(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "INSERT INTO workflow_instance (id, workflow_id, version, trigger_key, trigger, status, run_params) "
        "SELECT 'r' || g, 'wf', 1, 'k' || g, '{}'::jsonb, 'running', jsonb_build_object('n', g) "
        "FROM generate_series(1, 50) g"
    )
    await conn.execute(
        "INSERT INTO accepted_start (instance_id, workflow_id, request_digest) "
        "SELECT 'r' || g, 'wf', 'd' || g FROM generate_series(40, 60) g"
    )
    keys = ["r3", "r45", "r55", "r99", "r3"]  # a run; a run with its accepted start; only accepted; none
    assert (
        {r["id"] for r in await conn.fetch(EXISTING_RUNS, keys)}
        == {r["id"] for r in await conn.fetch(OLD_EXISTING_RUNS, keys)}
        == {"r3", "r45"}
    )
    new = sorted(tuple(r) for r in await conn.fetch(_READ_STARTS, keys))
    old = sorted(tuple(r) for r in await conn.fetch(OLD_READ_STARTS, keys))
    assert sorted(set(new)) == old  # the repeated key's rows come twice: the caller keeps one
    assert [r[0] for r in await conn.fetch(_READ_STARTS, keys)] == sorted(
        [r[0] for r in new], reverse=True
    )  # the runs first
