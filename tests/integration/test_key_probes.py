"""Batch lookups by key probe an index per key in every plan, generic ones included.

asyncpg prepares every statement and Postgres reuses a generic plan after five executions. A service
prepares its statements while the tables are still empty, and for ``WHERE id = ANY($1)`` the cheaper
generic plan is then a sequential scan, kept while the table grows (``legato.store.keys``). These
statements run on every API start batch and every scheduler batch that starts runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest

from legato.bus.publisher import OutgoingMessage
from legato.scheduler.repository import existing_runs
from legato.scheduler.writes import _RUNS_NEW
from legato.store.outbox import outbox_args
from legato.trigger.start_api import _START_BATCH, _read_starts

# The probe the scheduler's lock statement makes of a batch's new run ids, and the read _START_BATCH
# makes of a batch's ids, each on its own.
EXISTING_RUNS = existing_runs("$1::text[]")
_READ_STARTS = _read_starts("$1::text[]")

# The check a scheduler batch that commits on its own makes of the runs it starts (their ids as a JSON
# array), as a query of its own.
RUNS_NEW = "SELECT " + _RUNS_NEW.format(1)

# The statements as they were: what the generic plan of each turns into on empty tables.
OLD_EXISTING_RUNS = "SELECT id FROM workflow_instance WHERE id = ANY($1::text[])"
OLD_READ_STARTS = (
    "SELECT true AS is_run, i.id, i.status, i.run_params, i.version, a.request_digest "
    "FROM workflow_instance i LEFT JOIN accepted_start a ON a.instance_id = i.id "
    "WHERE i.id = ANY($1::text[]) UNION ALL "
    "SELECT false, instance_id, NULL, NULL, NULL, request_digest FROM accepted_start "
    "WHERE instance_id = ANY($1::text[]) ORDER BY 1 DESC"
)
# ...and once ANALYZE found a few thousand runs: Postgres counts 100 elements in a JSON array, so the
# hash join that reads the whole table looks cheaper than 100 probes (the batch holds one or two ids).
OLD_RUNS_NEW = (
    "SELECT NOT EXISTS (SELECT 1 FROM jsonb_array_elements_text($1::text::jsonb) AS s (id) "
    "WHERE EXISTS (SELECT 1 FROM workflow_instance i WHERE i.id = s.id))"
)


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(database_url)
    yield c
    await c.close()


async def generic_plan(conn: asyncpg.Connection, sql: str, keys: str = "{r1,r2}") -> str:
    """The plan Postgres keeps for ``sql`` once it stops planning per execution."""
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    await conn.execute(f"PREPARE lookup AS {sql}")
    try:
        rows = await conn.fetch(f"EXPLAIN EXECUTE lookup('{keys}')")
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


async def test_a_batch_lookup_probes_the_index_once_analyze_found_thousands_of_runs(
    conn: asyncpg.Connection,
) -> None:
    """The plan a scheduler's session made after autovacuum analyzed the table mid-growth, and kept
    until the next ANALYZE: a bench caught it reading ~5,000 rows per start batch, 130 times a second."""
    await conn.execute(
        "INSERT INTO workflow_instance (id, workflow_id, version, trigger_key, trigger, status, run_params) "
        "SELECT 'run-' || g || '-' || md5(g::text), 'wf', 1, 'k' || g, '{}'::jsonb, 'succeeded', "
        "jsonb_build_object('n', g) FROM generate_series(1, 3000) g"
    )
    await conn.execute(
        "INSERT INTO accepted_start (instance_id, workflow_id, request_digest) "
        "SELECT 'run-' || g || '-' || md5(g::text), 'wf', 'd' || g FROM generate_series(1, 3000) g"
    )
    await conn.execute("ANALYZE workflow_instance; ANALYZE accepted_start")
    json_keys = '["r1", "r2"]'
    assert "Seq Scan on workflow_instance" in await generic_plan(conn, OLD_RUNS_NEW, json_keys)  # the fix
    for sql, keys in ((RUNS_NEW, json_keys), (EXISTING_RUNS, "{r1,r2}"), (_READ_STARTS, "{r1,r2}")):
        plan = await generic_plan(conn, sql, keys)
        assert "Seq Scan" not in plan and "Index" in plan, plan


async def test_the_runs_new_check_answers_as_before(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "INSERT INTO workflow_instance (id, workflow_id, version, trigger_key, trigger, status, run_params) "
        "SELECT 'r' || g, 'wf', 1, 'k' || g, '{}'::jsonb, 'running', '{}'::jsonb FROM generate_series(1, 50) g"
    )
    for keys, new in (
        ([], True),
        (["x"], True),
        (["x", "x", "y"], True),
        (["x", "r7"], False),
        (["r50"], False),
    ):
        arg = msgspec.json.encode(keys).decode()
        assert await conn.fetchval(RUNS_NEW, arg) is new, keys
        assert await conn.fetchval(OLD_RUNS_NEW, arg) is new, keys


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


async def test_a_start_batch_writes_only_the_new_starts_and_probes_the_index(
    conn: asyncpg.Connection,
) -> None:
    """``instance.start``'s one statement: the known ids come back as they are, only a new one gets its
    accepted start and its StartRun, and its generic plan reads no table whole."""
    await conn.execute(
        "INSERT INTO workflow_instance (id, workflow_id, version, trigger_key, trigger, status, run_params) "
        "VALUES ('run-kept', 'wf', 1, 'k1', '{}', 'running', '{\"n\": 1}'), "
        "('run-pruned', 'wf', 2, 'k2', '{}', 'succeeded', '{\"n\": 2}')"
    )
    await conn.execute(
        "INSERT INTO accepted_start (instance_id, workflow_id, request_digest) "
        "VALUES ('run-kept', 'wf', 'd-kept'), ('accepted', 'wf', 'd-accepted')"
    )
    ids = ["run-kept", "run-pruned", "accepted", "new"]
    msgs = [OutgoingMessage(f"t.trigger.{i}", b"{}", msg_id=f"start:{i}") for i in ids]
    args = [*outbox_args(msgs), ids, ["wf"] * 4, [f"d-{i}" for i in ids]]
    # Keyed by (id, what): a run that still has its accepted start comes as both, the run first.
    got = await conn.fetch(_START_BATCH, *args)
    kind = {True: "run", False: "accepted", None: "new"}
    rows = {(r["id"], kind[r["is_run"]]): r for r in got}
    assert set(rows) == {
        ("run-kept", "run"),
        ("run-pruned", "run"),
        ("run-kept", "accepted"),
        ("accepted", "accepted"),
        ("new", "new"),
    }
    assert rows["run-kept", "run"]["request_digest"] == "d-kept"
    assert rows["run-pruned", "run"]["request_digest"] is None
    assert rows["run-pruned", "run"]["version"] == 2 and rows["run-pruned", "run"]["status"] == "succeeded"
    assert rows["accepted", "accepted"]["request_digest"] == "d-accepted"
    assert [r["id"] for r in got if r["outbox_id"] is not None] == ["new"]
    assert await conn.fetchval("SELECT array_agg(msg_id) FROM outbox") == ["start:new"]
    assert await conn.fetchval("SELECT id FROM outbox") == rows["new", "new"]["outbox_id"]
    assert (
        await conn.fetchval("SELECT request_digest FROM accepted_start WHERE instance_id = 'new'") == "d-new"
    )
    # Again: every id is known now, nothing more is written.
    again = await conn.fetch(_START_BATCH, *args)
    assert (
        all(r["outbox_id"] is None for r in again) and await conn.fetchval("SELECT count(*) FROM outbox") == 1
    )

    await conn.execute("TRUNCATE workflow_instance, accepted_start, outbox CASCADE")
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    await conn.execute(
        "PREPARE start_batch (text[], bytea[], text[], jsonb[], boolean[], text[], text[], text[]) AS "
        + _START_BATCH
    )
    try:
        plan = "\n".join(
            r[0]
            for r in await conn.fetch(
                "EXPLAIN EXECUTE start_batch('{s}', '{}', '{m}', '{}', '{f}', '{r1}', '{wf}', '{d}')"
            )
        )
    finally:
        await conn.execute("DEALLOCATE start_batch")
        await conn.execute("RESET plan_cache_mode")
    assert "Seq Scan on workflow_instance" not in plan and "Seq Scan on accepted_start" not in plan, plan
