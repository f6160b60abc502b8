"""The executor needs no database: started with a database URL that leads nowhere, it runs steps, and a
poison work item it cannot decode ends up as a ``dead_letter`` row written by a stateful service."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg

from legato.bus import OutgoingMessage, Publisher, Topology
from legato.bus.connection import connect
from legato.config.settings import Settings
from tests.support.stack import Stack, running_stack, wait_for

HELLO = """
id: stateless
run_strategy: {type: parallel, max_concurrency: 5}
steps:
  - id: hello
    type: shell
    command: 'echo "$LEGATO_RUN_ID $LEGATO_ATTEMPT_ID" >> {log}'
"""


def test_the_stack_never_tells_the_executor_where_the_database_is(settings: Settings, tmp_path: Path) -> None:
    stack = Stack(settings, tmp_path)
    assert "LEGATO_DATABASE_URL" not in stack["executor0"].env
    assert "--database-url" not in stack["executor0"].args
    assert stack["scheduler"].env["LEGATO_DATABASE_URL"] == settings.database_url


async def test_executor_without_a_database_runs_steps_and_its_dead_letters_reach_postgres(
    settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "ran.log"
    # Nothing listens on port 9: an executor that tried to use this URL would not start.
    nowhere = {"LEGATO_DATABASE_URL": "postgresql://nobody@127.0.0.1:9/nothing"}
    async with running_stack(settings, tmp_path / "stack") as (stack, client):
        executor = stack["executor0"]
        executor.terminate()
        executor.env = {**executor.env, **nowhere}
        executor.start()
        await client.push(HELLO.replace("{log}", str(log)))
        run = await client.start("stateless")
        info = await wait_for(client, run.instance_id, timeout=60)
        assert info["status"] == "succeeded", info
        # The ids a step makes its effects idempotent with are in its environment.
        attempt_id = info["steps"][0]["attempts"][0]["attempt_id"]
        assert log.read_text().splitlines() == [f"{run.instance_id} {attempt_id}"]

        topo = Topology(settings.namespace, settings.partitions)
        nc = await connect(settings.nats_url, name="test-poison")
        try:
            await Publisher(nc).publish(
                OutgoingMessage(topo.work_subject("default"), b"not a work item", msg_id="poison-e2e")
            )
        finally:
            await nc.close()
        conn = await asyncpg.connect(settings.database_url)
        try:
            async with asyncio.timeout(30):
                while (
                    row := await conn.fetchrow(
                        "SELECT stream, consumer, payload, error FROM dead_letter WHERE msg_id = 'poison-e2e'"
                    )
                ) is None:
                    await asyncio.sleep(0.1)
        finally:
            await conn.close()
        assert executor.alive
    assert row["stream"] == topo.work_stream
    assert row["consumer"] == topo.consumer_name("executor_default")
    assert bytes(row["payload"]) == b"not a work item"
    assert row["error"].startswith("undecodable message")
