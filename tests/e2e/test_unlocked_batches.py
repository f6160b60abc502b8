"""A scheduler batch that computes without the workflow row lock and writes in one self-checking
statement (``WorkflowActor._apply``'s ``unlocked``), through the public interfaces with every service a
process: what it computed from is checked when it writes, and when that is no longer so it writes
nothing and is computed again under the lock. What the steps did is read from their own log."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import msgspec

from legato.bus.topology import Topology
from legato.config.settings import Settings
from legato.protocol import encode
from legato.protocol.messages import StartRun, TriggerInfo
from tests.support.stack import running_stack, wait_for

LOGGED = """
id: logged
run_strategy: {type: parallel, max_concurrency: 10}
steps:
  - id: work
    type: shell
    command: 'echo "$LEGATO_RUN_ID" >> "$STEP_LOG"'
    env: {STEP_LOG: "LOG_PATH"}
"""


def with_info_logs(settings: Settings) -> Settings:
    """The services log at info: the scheduler says when it computed a batch again, and why."""
    return msgspec.structs.replace(settings, log_level="info")


def runs_in(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


async def test_a_pause_the_actor_has_not_heard_of_holds_the_next_start(
    settings: Settings, tmp_path: Path
) -> None:
    """The workflow is paused behind the actor's back (no WorkflowChanged message reaches it): its
    next batch computes the start with the configuration in memory (not paused), finds the row paused
    when it writes, writes nothing, and is computed again under the lock: the run waits, queued."""
    log = tmp_path / "steps.log"
    async with running_stack(with_info_logs(settings), tmp_path) as (stack, client):
        await client.push(LOGGED.replace("LOG_PATH", str(log)))
        first = await client.start("logged")
        assert (await wait_for(client, first.instance_id))["status"] == "succeeded"
        conn = await asyncpg.connect(settings.database_url)
        try:
            await conn.execute("UPDATE workflow SET paused = true WHERE id = 'logged'")
        finally:
            await conn.close()
        held = await client.start("logged")
        info = await wait_for(client, held.instance_id, statuses=("queued", "running", "succeeded"))
        await asyncio.sleep(1.0)
        info = await client.get(held.instance_id)
        assert info["status"] == "queued", info
        assert runs_in(log) == [first.instance_id]
        logs = stack.logs()
        assert "workflow changed since the batch read it" in logs  # found when it wrote
        assert "batch_item_failed" not in logs and "batch_failed" not in logs  # computed again, at once
        # Resumed through the API, the held run runs, once.
        await client.resume_workflow("logged", reason="test")
        assert (await wait_for(client, held.instance_id))["status"] == "succeeded"
        assert runs_in(log) == [first.instance_id, held.instance_id]


async def test_a_start_replayed_after_its_run_ended_runs_nothing_again(
    settings: Settings, tmp_path: Path
) -> None:
    """A StartRun delivered again under another message id (JetStream's dedup window passed by), after
    its run ended and left the actor's memory: the batch takes it for a new run, its statement finds the
    run in the table and writes nothing, and the batch computed again under the lock skips it. The
    starts beside it in the stream still run, each once."""
    log = tmp_path / "steps.log"
    async with running_stack(with_info_logs(settings), tmp_path) as (stack, client):
        await client.push(LOGGED.replace("LOG_PATH", str(log)))
        done = await client.start("logged")
        assert (await wait_for(client, done.instance_id))["status"] == "succeeded"
        js = client.nc.jetstream()
        subject = Topology(settings.namespace, settings.partitions).trigger_subject("logged")
        replay = StartRun(
            workflow_id="logged",
            trigger_key=f"api:{done.instance_id}",
            instance_id=done.instance_id,
            trigger=TriggerInfo(kind="api", by="test"),
            params={},
            requested_at=time.time(),
        )
        for copy in range(3):
            await js.publish(subject, encode(replay), headers={"Nats-Msg-Id": f"replay:{copy}"})
        after = await client.start("logged")
        assert (await wait_for(client, after.instance_id))["status"] == "succeeded"
        info = await client.get(done.instance_id)
        assert info["status"] == "succeeded"
        assert [len(s["attempts"]) for s in info["steps"]] == [1], info["steps"]
        assert sorted(runs_in(log)) == sorted([done.instance_id, after.instance_id])
        logs = stack.logs()
        assert "a run the batch started exists already" in logs  # found when it wrote
        assert "batch_item_failed" not in logs and "batch_failed" not in logs  # computed again, at once
