"""The attempt claims' horizon, black-box: a run's work item that waited in the queue longer than the
claims are kept for (``LEGATO_ATTEMPT_CLAIM_TTL`` less its clock margin) is not run late; its attempt is
reported lost and the step retried under its platform-retry budget, and the step's own log shows one
execution."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from legato.config.settings import Settings
from tests.support.stack import attempts_of, running_stack, until, wait_for

WORKFLOW = """
id: horizon
steps:
  - id: work
    type: shell
    command: 'echo "$LEGATO_ATTEMPT_ID" >> {log}'
    retry: {{platform: 2, backoff: {{type: fixed, initial: 1s}}}}
"""


async def test_a_work_item_that_waited_past_the_horizon_is_retried_not_run_late(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = tmp_path / "ran.log"
    monkeypatch.setenv("LEGATO_ATTEMPT_CLAIM_TTL", "8")  # every service: a horizon of 4 s
    async with running_stack(settings, tmp_path / "stack") as (stack, client):
        executor = stack["executor0"]
        executor.terminate()  # the work item waits in the queue, with nobody to take it
        await client.push(WORKFLOW.format(log=ran))
        run = await client.start("horizon")
        first = await until(lambda: attempts_of(client, run.instance_id), 30, "the first attempt dispatched")
        await asyncio.sleep(4.5)  # dispatched longer ago than the 4 s horizon
        executor.start()
        info = await wait_for(client, run.instance_id, timeout=60)
    assert info["status"] == "succeeded", info
    [step] = info["steps"]
    lost, retried = step["attempts"]
    assert lost["attempt_id"] == first[0]["attempt_id"] and lost["status"] == "lost"
    assert "dispatched" in lost["error"] and "LEGATO_ATTEMPT_CLAIM_TTL" in lost["error"]
    assert retried["status"] == "succeeded"
    # What the step did: it ran once, as the retry, never as the item that waited too long.
    assert ran.read_text().splitlines() == [retried["attempt_id"]]
