"""Listing runs, and a step's iterations, reads what the page shows, not every child run.

A 100,000-iteration foreach leaves 100,000 child runs. The default run listing leaves them out, but
its indexes held them: every page walked past the newest child runs to find top-level ones (migration
0101). A step's iteration page read every iteration of the step and cut the page in Python. Both are
checked here on real plans, ``EXPLAIN ANALYZE`` of the statements the API runs, and on what they return.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from legato.protocol.api import ListInstances
from legato.store.pool import close_pool, create_pool
from legato.trigger.instances import iterations_query, list_instances, list_iterations, listing_query

CHILDREN = 20_000  # iterations of one foreach step, all newer than the top-level runs
TOP = 30  # top-level runs of three workflows, every fifth one failed
RETRIED = range(0, CHILDREN, 1000)  # iterations that ran twice: failed first, then succeeded


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    # As the API's pool: jsonb as Python values, each statement planned once (a generic plan).
    pool = await create_pool(database_url, max_size=1, generic_plans=True)
    c = await pool.acquire()
    await c.execute(
        "INSERT INTO workflow_instance (id, workflow_id, version, trigger_key, trigger, status) "
        "SELECT 'top' || g, 'wf' || (g % 3), 1, 'k' || g, '{}', "
        "CASE WHEN g % 5 = 0 THEN 'failed' ELSE 'succeeded' END FROM generate_series(0, $1 - 1) g",
        TOP,
    )
    await c.execute(
        "INSERT INTO workflow_instance (id, workflow_id, version, trigger_key, trigger, status, "
        "parent_instance_id, parent_step_id, parent_iteration) "
        "SELECT 'first' || g, 'wf0', 1, 'first' || g, '{}', 'failed', 'top0', 'each', g "
        "FROM unnest($1::int[]) g",
        list(RETRIED),
    )
    await c.execute(
        "INSERT INTO workflow_instance (id, workflow_id, version, trigger_key, trigger, status, outputs, "
        "parent_instance_id, parent_step_id, parent_iteration) "
        "SELECT 'it' || g, 'wf0', 1, 'it' || g, '{}', CASE WHEN g % 7 = 3 THEN 'failed' ELSE 'succeeded' END, "
        "jsonb_build_object('n', g), 'top0', 'each', g FROM generate_series(0, $1 - 1) g",
        CHILDREN,
    )
    await c.execute("ANALYZE workflow_instance")
    yield c
    await pool.release(c)
    await close_pool(pool)


async def analyzed(conn: asyncpg.Connection, sql: str, args: list[object]) -> str:
    rows = await conn.fetch(f"EXPLAIN (ANALYZE, COSTS OFF) {sql}", *args)
    return "\n".join(r[0] for r in rows)


def top_status(g: int) -> str:
    return "failed" if g % 5 == 0 else "succeeded"


def rows_removed(plan: str) -> int:
    return sum(int(n) for n in re.findall(r"Rows Removed by Filter: (\d+)", plan))


FILTERS = {
    "all workflows": {},
    "one workflow": {"workflow_id": "wf0"},
    "one status": {"status": "failed"},
    "workflow and status": {"workflow_id": "wf0", "status": "succeeded"},
    "a later page": {"cursor": "top20"},  # the page after top20's: its seq is the cursor
}


@pytest.mark.parametrize("filters", FILTERS.values(), ids=FILTERS.keys())
async def test_the_default_listing_never_walks_over_child_runs(
    conn: asyncpg.Connection, filters: dict[str, Any]
) -> None:
    seqs = {r["id"]: r["seq"] for r in await conn.fetch("SELECT id, seq FROM workflow_instance")}
    query: dict[str, Any] = {
        "workflow_id": None,
        "status": None,
        "since": None,
        "until": None,
        "cursor": None,
    }
    query.update(filters)
    if query["cursor"] is not None:
        query["cursor"] = seqs[query["cursor"]]
    listing = ListInstances(**query, limit=5)
    plan = await analyzed(conn, *listing_query(listing))
    assert "Seq Scan" not in plan, plan
    # At most the top-level runs the filter leaves out, never the 20,000 child runs above them.
    assert rows_removed(plan) <= TOP, plan
    page = await list_instances(conn, listing)
    ids = [r["instance_id"] for r in page["instances"]]
    assert ids and all(i.startswith("top") for i in ids), ids
    expected = [
        f"top{g}"
        for g in sorted(range(TOP), key=lambda g: -seqs[f"top{g}"])
        if query["workflow_id"] in (None, f"wf{g % 3}")
        and query["status"] in (None, top_status(g))
        and (query["cursor"] is None or seqs[f"top{g}"] < query["cursor"])
    ][:5]
    assert ids == expected


async def test_a_listing_with_children_still_shows_them_newest_first(conn: asyncpg.Connection) -> None:
    listing = ListInstances(workflow_id="wf0", limit=3, include_children=True)
    assert "Seq Scan" not in await analyzed(conn, *listing_query(listing))
    page = await list_instances(conn, listing)
    assert [r["instance_id"] for r in page["instances"]] == [f"it{CHILDREN - 1 - k}" for k in range(3)]


async def test_an_iteration_page_reads_only_its_own_iterations(conn: asyncpg.Connection) -> None:
    for status, after in [(None, None), (None, 4995), ("succeeded", 4995), ("failed", 12_000)]:
        plan = await analyzed(conn, *iterations_query("top0", "each", status=status, after=after, limit=10))
        assert "Seq Scan" not in plan, plan
        scanned = re.findall(r"Index (?:Only )?Scan .*workflow_instance_children.*rows=(\d+)", plan)
        assert scanned, plan
        # The page's iterations (from `after` on, both sides of the check for a later run), the retried
        # ones' copies and those the status leaves out: tens of rows, not the step's 20,000.
        assert sum(int(n) for n in scanned) <= 200, plan

    page = await list_iterations(conn, "top0", "each", status=None, after=995, limit=10)
    assert [i["iteration"] for i in page["iterations"]] == list(range(996, 1006))
    assert page["next"] == 1005
    # A retried iteration is listed once, by its latest run: iteration 1000 failed, then succeeded.
    retried = next(i for i in page["iterations"] if i["iteration"] == 1000)
    assert (retried["instance_id"], retried["status"], retried["outputs"]) == (
        "it1000",
        "succeeded",
        {"n": 1000},
    )

    failed = await list_iterations(conn, "top0", "each", status="failed", after=None, limit=4)
    assert [i["iteration"] for i in failed["iterations"]] == [3, 10, 17, 24]
    assert failed["next"] == 24
    last = await list_iterations(conn, "top0", "each", status=None, after=CHILDREN - 3, limit=10)
    assert [i["iteration"] for i in last["iterations"]] == [CHILDREN - 2, CHILDREN - 1]
    assert last["next"] is None
