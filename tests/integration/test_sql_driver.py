"""The ``sql`` runner and its PostgreSQL driver against a real server (the test Postgres): statements
with bound values, the transaction, outputs, errors, and cancellation of a running query on the server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from legato.executor.capture import CapturedOutput
from legato.executor.connection_store import ConnectionStore
from legato.executor.runners.sql import SqlRunner
from legato.executor.secret_store import SecretStore
from legato.executor.step_runner import StepContext, StepFailed
from legato.protocol.messages import JSONValue, WorkItem


def context(config: dict[str, JSONValue]) -> StepContext:
    item = WorkItem(
        attempt_id=uuid.uuid4().hex,
        workflow_id="wf",
        instance_id="i",
        step_id="s",
        attempt=1,
        step_type="sql",
        config=config,
        reply_subject="x",
    )
    return StepContext(item=item, output=CapturedOutput(), kill_grace=1.0)


@pytest.fixture
async def runner(database_url: str) -> AsyncIterator[SqlRunner]:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE TABLE sales (day date, amount numeric, note text)")
    finally:
        await conn.close()
    yield SqlRunner(connections=ConnectionStore(environ={"LEGATO_CONNECTION_TARGET": database_url}))


def sql(*statements: str | dict[str, JSONValue], **extra: JSONValue) -> dict[str, JSONValue]:
    listed: list[JSONValue] = [s if isinstance(s, dict) else {"sql": s, "args": []} for s in statements]
    return {"connection": "target", "statements": listed, **extra}


async def test_statements_bind_values_and_report_rows(runner: SqlRunner) -> None:
    hostile = "x'); DROP TABLE sales; --"
    result = await runner.run(
        context(
            sql(
                {
                    "sql": "INSERT INTO sales VALUES ($1, $2, $3), ($1, 4, NULL)",
                    "args": ["2026-01-02", 10.5, hostile],
                },
                {
                    "sql": "SELECT day, sum(amount) AS total, max(note) AS note FROM sales WHERE day = $1 GROUP BY day",
                    "args": ["2026-01-02"],
                },
            )
        )
    )
    assert result.outputs == {
        "rows_affected": 2,
        "row": {"day": "2026-01-02", "total": "14.5", "note": hostile},
    }
    rows = await runner.run(context(sql("SELECT generate_series(1, 50) AS n", result="rows", max_rows=3)))
    assert rows.outputs == {"rows_affected": 0, "rows": [{"n": 1}, {"n": 2}, {"n": 3}], "truncated": True}


async def test_a_failing_statement_rolls_back_the_transaction(runner: SqlRunner, database_url: str) -> None:
    with pytest.raises(StepFailed) as failed:
        await runner.run(context(sql("INSERT INTO sales VALUES ('2026-01-01', 1, 'a')", "SELEC 1")))
    assert 'statement 2 of 2: PostgresSyntaxError: syntax error at or near "SELEC"' in failed.value.error
    assert "SQLSTATE 42601" in failed.value.error
    # transaction: false keeps what ran before the error.
    with pytest.raises(StepFailed):
        await runner.run(
            context(sql("INSERT INTO sales VALUES ('2026-01-01', 1, 'b')", "SELEC 1", transaction=False))
        )
    conn = await asyncpg.connect(database_url)
    try:
        notes = await conn.fetch("SELECT note FROM sales ORDER BY note")
    finally:
        await conn.close()
    assert [r["note"] for r in notes] == ["b"]


async def test_wrong_args_and_missing_connection_fail_naming_them(runner: SqlRunner) -> None:
    with pytest.raises(StepFailed) as failed:
        await runner.run(context(sql({"sql": "SELECT $1::int + $2::int", "args": [1]})))
    assert failed.value.error == "statement: it has 2 placeholder(s) ($1...) but 1 arg(s) were given"
    with pytest.raises(StepFailed) as failed:
        await runner.run(context(sql({"sql": "SELECT $1::date", "args": ["not a date"]})))
    assert failed.value.error.startswith("statement: args[0] for $1 (date): Invalid isoformat")
    with pytest.raises(StepFailed) as failed:
        await runner.run(context({"connection": "nope", "statements": [{"sql": "SELECT 1"}]}))
    assert failed.value.error == (
        "connection 'nope' is not available to this executor "
        "(provide the environment variable LEGATO_CONNECTION_NOPE)"
    )


async def running_queries(url: str, marker: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT query FROM pg_stat_activity WHERE query LIKE $1 AND pid <> pg_backend_pid()",
            f"%{marker}%",
        )
    finally:
        await conn.close()
    return [r["query"] for r in rows]


async def test_cancelling_the_step_cancels_the_query_on_the_server(
    runner: SqlRunner, database_url: str
) -> None:
    marker = f"m{uuid.uuid4().hex[:12]}"
    step = asyncio.create_task(runner.run(context(sql(f"SELECT pg_sleep(600) /* {marker} */"))))
    for _ in range(100):
        if await running_queries(database_url, marker):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the query never showed up in pg_stat_activity")
    step.cancel()
    with pytest.raises(asyncio.CancelledError):
        await step
    # Gone by the time the step has finished cancelling: nothing to wait for.
    assert await running_queries(database_url, marker) == []


async def test_a_secret_arg_is_bound_and_masked_in_the_outputs(database_url: str) -> None:
    runner = SqlRunner(
        connections=ConnectionStore(environ={"LEGATO_CONNECTION_TARGET": database_url}),
        secrets=SecretStore(environ={"LEGATO_SECRET_TOKEN": "s3cr3t-value"}),
    )
    result = await runner.run(
        context(
            sql(
                {"sql": "SELECT $1::text AS v, length($1::text) AS n", "args": [{"$secret": "token"}]},
            )
        )
    )
    assert result.outputs == {"rows_affected": 0, "row": {"v": "***", "n": len("s3cr3t-value")}}


async def test_connections_are_pooled_until_the_runner_is_closed(
    runner: SqlRunner, database_url: str
) -> None:
    async def pooled() -> int:
        conn = await asyncpg.connect(database_url)
        try:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'legato executor' "
                    "AND datname = current_database()"
                )
            )
        finally:
            await conn.close()

    for _ in range(3):
        await runner.run(context(sql("SELECT 1")))
    assert await pooled() == 1  # one connection, reused by the three attempts
    await runner.aclose()
    await runner.aclose()  # idempotent
    assert await pooled() == 0
