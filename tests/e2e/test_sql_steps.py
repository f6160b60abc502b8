"""``sql`` steps on the real stack, against the test Postgres server through a named connection:
values bound (never formatted in), the transaction, outputs, a bad statement retried and shown in
``legato show``, the query cancelled on the server by a timeout and by a stop, and the connection's
credentials nowhere but in the executor (the scan of test_secrets.py)."""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from nats.aio.msg import Msg

from legato.config.settings import Settings
from legato.devstack.otlp_sink import OtlpSink
from tests.e2e.test_secrets import cli, database_text, streams_text
from tests.support.stack import running_stack, until, wait_for

SALES = """
id: sales-sql
params:
  day: {type: date, default: "2026-01-02"}
  note: {type: string, default: "x'); DROP TABLE sales; --"}
steps:
  - id: load
    type: sql
    connection: target
    statements:
      - "CREATE TABLE IF NOT EXISTS sales (day date, amount numeric, note text)"
      - sql: "INSERT INTO sales VALUES ($1, $2, $3), ($1, 4, NULL)"
        args: ["${params.day}", 10.5, "${params.note}"]
      - sql: "SELECT current_user AS who, sum(amount) AS total, max(note) AS note FROM sales WHERE day = $1"
        args: ["${params.day}"]
    outputs: [rows_affected, row]
  - id: bad
    type: sql
    depends_on: [load]
    connection: target
    retry: {error: 1, backoff: {type: fixed, initial: 1s}}
    statements: ["INSERT INTO sales VALUES ('1999-01-01', 1, 'rolled back')", "SELEC broken"]
"""

SLOW = """
id: slow-sql{suffix}
steps:
  - id: wait
    type: sql
    connection: target
    timeout: {timeout}
    sql: "SELECT pg_sleep(600)"
"""


async def target_role(database_url: str) -> tuple[str, str, str]:
    """A login role with a random password on the test server: (user, password, its connection URL)."""
    user = f"sqlstep_{uuid.uuid4().hex[:8]}"
    password = "pw-" + secrets.token_hex(16)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
        await conn.execute(f"GRANT ALL ON SCHEMA public TO {user}")
    finally:
        await conn.close()
    parts = urlsplit(database_url)
    url = f"postgresql://{user}:{password}@{parts.hostname}:{parts.port}{parts.path}"
    return user, password, url


@pytest.mark.slow
async def test_sql_steps_run_and_their_credentials_stay_in_the_executor(
    settings: Settings, tmp_path: Path
) -> None:
    user, password, url = await target_role(settings.database_url)
    connections = tmp_path / "connections"
    connections.mkdir()
    (connections / "target").write_text(url + "\n")  # as a mounted Kubernetes Secret
    seen_on_nats: list[bytes] = []

    async def record(msg: Msg) -> None:
        seen_on_nats.append(
            msg.subject.encode() + b" " + (msg.data or b"") + json.dumps(msg.headers or {}).encode()
        )

    with OtlpSink() as sink:
        env = {**sink.env(), "OTEL_BSP_SCHEDULE_DELAY": "200", "LEGATO_CONNECTIONS_DIR": str(connections)}
        async with running_stack(settings, tmp_path / "stack", extra_env=env) as (stack, client):
            sub = await client.nc.subscribe(">", cb=record)
            await client.push(SALES)
            started = await client.start("sales-sql", {})
            info = await wait_for(client, started.instance_id, timeout=90)
            shown = cli(settings, "show", started.instance_id)
            # The executor is still up: the next run's load step succeeds again.
            again = await wait_for(client, (await client.start("sales-sql", {})).instance_id, timeout=90)
            await asyncio.sleep(1.0)  # spans exported every 200 ms
            await sub.unsubscribe()
            streams = await streams_text(client, settings.namespace)
            logs = stack.logs() + "".join(
                s.log_path.read_text(errors="replace") for s in stack.services.values() if s.log_path.exists()
            )
        database = await database_text(settings.database_url)
        spans = b"".join(sink.trace_bodies)

    steps = {s["step_id"]: s for s in info["steps"]}
    assert steps["load"]["status"] == "succeeded", steps["load"]
    # The hostile note went in as a value: stored verbatim, the table still there.
    assert steps["load"]["outputs"] == {
        "rows_affected": 2,
        "row": {"who": user, "total": "14.5", "note": "x'); DROP TABLE sales; --"},
    }
    bad = steps["bad"]
    assert bad["status"] == "failed" and len(bad["attempts"]) == 2, bad  # retried once, per its policy
    for attempt in bad["attempts"]:
        assert 'statement 2 of 2: PostgresSyntaxError: syntax error at or near "SELEC"' in attempt["error"]
    assert 'syntax error at or near "SELEC"' in shown
    assert {s["step_id"]: s["status"] for s in again["steps"]}["load"] == "succeeded"
    conn = await asyncpg.connect(settings.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM sales WHERE note = 'rolled back'") == 0
    finally:
        await conn.close()
    assert seen_on_nats and spans and database and "sales-sql" in shown
    for value in (password, url):
        assert value not in database
        assert value.encode() not in streams
        assert not [m for m in seen_on_nats if value.encode() in m]
        assert value not in logs
        assert value.encode() not in spans
        assert value not in shown
        assert value not in json.dumps(info)


async def running_queries(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT query FROM pg_stat_activity WHERE query LIKE '%pg_sleep(600)%' "
            "AND pid <> pg_backend_pid() AND state = 'active' AND datname = current_database()"
        )
    finally:
        await conn.close()
    return [r["query"] for r in rows]


async def test_a_timeout_and_a_stop_cancel_the_query_on_the_server(
    settings: Settings, tmp_path: Path
) -> None:
    _user, _password, url = await target_role(settings.database_url)
    env = {"LEGATO_CONNECTION_TARGET": url}
    async with running_stack(settings, tmp_path / "stack", extra_env=env) as (_stack, client):
        await client.push(SLOW.format(suffix="-2s", timeout="2s"))
        await client.push(SLOW.format(suffix="", timeout="1h"))
        timed = await client.start("slow-sql-2s", {})
        await until(lambda: running_queries(settings.database_url), 30, "the query runs")
        info = await wait_for(client, timed.instance_id, timeout=60)
        attempt = info["steps"][0]["attempts"][0]
        assert (attempt["failure_kind"], attempt["error"]) == ("timeout", "timed out after 2s"), attempt
        # Reported only once the server had cancelled it.
        assert await running_queries(settings.database_url) == []

        stopped = await client.start("slow-sql", {})
        await until(lambda: running_queries(settings.database_url), 30, "the query runs")
        await client.call("instance.stop", {"instance_id": stopped.instance_id, "reason": "enough"})
        info = await wait_for(client, stopped.instance_id, timeout=60)
        assert info["status"] == "stopped", info
        await until(lambda: _none(running_queries(settings.database_url)), 10, "the stopped query is gone")


async def _none(queries: Any) -> bool:
    return not await queries
