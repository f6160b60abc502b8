"""One big run must not hold up an unrelated workflow in the same partition (fair share of the scheduler)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import pytest

from legato.bus.topology import partition_of
from legato.config.settings import Settings
from tests.support.stack import running_stack, until, wait_for

BIG = """
id: {id}
run_strategy: {type: parallel, max_concurrency: 5}
steps:
  - id: each
    type: foreach
    foreach:
      over: "range(10000)"
      as: k
      concurrency: 10000
      steps:
        - id: work
          type: noop
"""

# The same fan-out written as 10,000 independent steps of one run (no foreach).
FLAT = "id: {id}\nrun_strategy: {type: parallel, max_concurrency: 5}\nsteps:\n" + "".join(
    f"  - {{id: s{i}, type: noop}}\n" for i in range(10_000)
)

# How many units of the big run exist so far, and how many attempts each unit had, per shape.
PROGRESS = {
    "foreach": "SELECT count(*) FROM workflow_instance WHERE parent_instance_id = $1",
    "flat": "SELECT count(*) FROM step_attempt WHERE instance_id = $1",
}
ATTEMPTS_PER_UNIT = {
    "foreach": "SELECT count(*) AS n FROM step_attempt a JOIN workflow_instance i ON i.id = a.instance_id "
    "WHERE i.parent_instance_id = $1 GROUP BY i.id",
    "flat": "SELECT count(*) AS n FROM step_attempt WHERE instance_id = $1 GROUP BY step_id",
}

PROBE = """
id: {id}
run_strategy: {type: parallel, max_concurrency: 5}
steps:
  - id: one
    type: noop
"""


def same_partition_ids(partitions: int) -> tuple[str, str]:
    big = "bigfan"
    p = partition_of(big, partitions)
    for i in range(1000):
        probe = f"probe{i}"
        if partition_of(probe, partitions) == p:
            return big, probe
    raise AssertionError("no probe id in the big workflow's partition")


@pytest.mark.slow
@pytest.mark.soak
@pytest.mark.parametrize("shape", ["foreach", "flat"])
async def test_unrelated_run_completes_while_a_10000_step_run_is_in_flight(
    settings: Settings, tmp_path: Path, shape: str
) -> None:
    big_id, probe_id = same_partition_ids(settings.partitions)
    async with running_stack(settings, tmp_path, concurrency=16) as (_stack, client):
        await client.push((BIG if shape == "foreach" else FLAT).replace("{id}", big_id, 1))
        await client.push(PROBE.replace("{id}", probe_id, 1))
        # Warm the probe workflow (its definition cached, its actor built) so only contention is timed.
        warm = await client.start(probe_id)
        assert (await wait_for(client, warm.instance_id))["status"] == "succeeded"
        big = await client.start(big_id)
        conn = await asyncpg.connect(settings.database_url)
        try:
            for _ in range(600):  # the big run is in flight: thousands of its iterations exist
                n = await conn.fetchval(PROGRESS[shape], big.instance_id)
                if n >= 1000:
                    break
                await asyncio.sleep(0.1)
            figures = []
            for _ in range(3):
                t0 = time.monotonic()
                run = await client.start(probe_id)
                info = await wait_for(client, run.instance_id, timeout=120)
                figures.append(time.monotonic() - t0)
                assert info["status"] == "succeeded"
                row = await conn.fetchrow(
                    "SELECT i.created_at, a.dispatched_at, a.started_at, a.ended_at, i.ended_at AS run_end "
                    "FROM workflow_instance i JOIN step_attempt a ON a.instance_id = i.id WHERE i.id = $1",
                    run.instance_id,
                )
                print("probe", figures[-1], dict(row) if row else None)
            big_left = await conn.fetchval(
                "SELECT status FROM workflow_instance WHERE id = $1", big.instance_id
            )
            t0 = time.monotonic()
            done = await wait_for(client, big.instance_id, timeout=300)
            print("big run finished", time.monotonic() - t0, "s after the probes")
            per_iteration = await conn.fetch(ATTEMPTS_PER_UNIT[shape], big.instance_id)
        finally:
            await conn.close()
        print("probe seconds", figures, "big run status while probing", big_left)
        assert big_left not in ("succeeded", "failed"), "the big run ended before the probe: nothing measured"
        assert max(figures) < 5.0, figures
        # The held steps were all sent in the end, each once.
        assert done["status"] == "succeeded", done["status"]
        assert len(per_iteration) == 10_000 and {r["n"] for r in per_iteration} == {1}


WIDE = """
id: wide
run_strategy: {type: parallel, max_concurrency: 5}
steps:
  - id: each
    type: foreach
    foreach:
      over: "range(30)"
      as: k
      concurrency: 30
      steps:
        - id: work
          type: shell
          command: sleep 0.3; echo "$LEGATO_INSTANCE_ID $LEGATO_PARAM_K" >> "{ledger}"
"""


@pytest.mark.slow
async def test_held_steps_run_exactly_once_across_a_scheduler_kill_9(
    settings: Settings, tmp_path: Path
) -> None:
    """With a window of 2, 28 of 30 ready steps are held in the scheduler; all run once, in spite of a
    kill -9 of the scheduler while most are held (the held steps are rebuilt from Postgres)."""
    ledger = tmp_path / "ledger.txt"
    extra = {"LEGATO_DISPATCH_WINDOW": "2"}
    async with running_stack(settings, tmp_path, concurrency=8, extra_env=extra) as (stack, client):
        await client.push(WIDE.replace("{ledger}", str(ledger)))
        run = await client.start("wide")
        conn = await asyncpg.connect(settings.database_url)
        try:
            held = 0
            for _ in range(300):
                held = await conn.fetchval(
                    "SELECT count(*) FROM step_run s JOIN workflow_instance i ON i.id = s.instance_id "
                    "WHERE i.parent_instance_id = $1 AND s.status = 'waiting' "
                    "AND s.reason->>'code' = 'waiting_for_dispatch_slot'",
                    run.instance_id,
                )
                if held >= 10:
                    break
                await asyncio.sleep(0.1)
            assert held >= 10, held
            stack["scheduler"].kill9()
            await asyncio.sleep(0.5)
            stack["scheduler"].start()
            info = await wait_for(client, run.instance_id, timeout=180)
            most_started = await conn.fetchval(
                "SELECT max(n) FROM (SELECT count(*) AS n FROM step_attempt a "
                "JOIN workflow_instance i ON i.id = a.instance_id WHERE i.parent_instance_id = $1 "
                "GROUP BY i.id) x",
                run.instance_id,
            )
        finally:
            await conn.close()
    assert info["status"] == "succeeded", info["status"]
    lines = ledger.read_text().splitlines()
    ks = sorted(int(line.split()[1]) for line in lines)
    assert ks == list(range(30)), ks  # every iteration's step ran, and ran once
    assert most_started == 1


# The probe's workflow, with room for a backlog's runs at once.
BUSY = PROBE.replace("max_concurrency: 5", "max_concurrency: 1000")


async def test_a_start_is_read_past_another_workflows_backlog_on_its_partition(
    settings: Settings, tmp_path: Path
) -> None:
    """2,000 starts of one workflow wait in its partition while its actor cannot commit (the test holds
    its workflow row): a start of another workflow on the same partition, sent after them, still runs,
    and afterwards every one of the 2,000 runs once."""
    busy_id, neighbour_id = same_partition_ids(settings.partitions)
    async with running_stack(settings, tmp_path) as (_stack, client):
        await client.push(BUSY.replace("{id}", busy_id, 1))
        await client.push(PROBE.replace("{id}", neighbour_id, 1))
        for wf in (busy_id, neighbour_id):  # both actors built, both definitions cached
            warm = await client.start(wf)
            assert (await wait_for(client, warm.instance_id))["status"] == "succeeded"
        conn = await asyncpg.connect(settings.database_url)
        holder = await asyncpg.connect(settings.database_url)
        try:
            hold = holder.transaction()
            await hold.start()
            # The busy workflow's actor locks this row first in every batch: it waits until we let go.
            await holder.execute("SELECT 1 FROM workflow WHERE id = $1 FOR UPDATE", busy_id)
            sem = asyncio.Semaphore(256)

            async def start_busy(i: int) -> str:
                async with sem:
                    return str((await client.start(busy_id, request_id=f"backlog-{i}")).instance_id)

            busy_runs = await asyncio.gather(*(start_busy(i) for i in range(2000)))
            neighbour = await client.start(neighbour_id)
            info = await wait_for(client, neighbour.instance_id, timeout=60)
            busy_applied = await conn.fetchval(
                "SELECT count(*) FROM workflow_instance WHERE workflow_id = $1", busy_id
            )
            await hold.rollback()
            assert info["status"] == "succeeded", info["status"]
            assert busy_applied == 1, f"{busy_applied} runs of the held workflow existed: it was not held"

            async def all_ended() -> bool:
                n = await conn.fetchval(
                    "SELECT count(*) FROM workflow_instance WHERE id = ANY($1::text[]) AND status = 'succeeded'",
                    busy_runs,
                )
                return bool(n == len(busy_runs))

            await until(all_ended, 60, "every held run succeeded")
            attempts = await conn.fetch(
                "SELECT instance_id, count(*) AS n FROM step_attempt WHERE instance_id = ANY($1::text[]) "
                "GROUP BY instance_id",
                busy_runs,
            )
            assert len(attempts) == 2000 and {r["n"] for r in attempts} == {1}
            assert await conn.fetchval("SELECT count(*) FROM dead_letter") == 0
        finally:
            await holder.close()
            await conn.close()


# A fan-out of steps far slower than a noop, and another workflow's one step: both write what they did.
SLOW_FAN = """
id: slowfan
run_strategy: {type: parallel, max_concurrency: 5}
steps:
  - id: each
    type: foreach
    foreach:
      over: "range(24)"
      as: k
      concurrency: 24
      steps:
        - id: work
          type: shell
          command: echo "fan $LEGATO_PARAM_K" >> "{ledger}"; sleep 0.5
"""
NEIGHBOUR = """
id: neighbour
run_strategy: {type: parallel, max_concurrency: 5}
steps:
  - id: one
    type: shell
    command: echo "neighbour" >> "{ledger}"
"""


async def test_another_workflows_step_runs_ahead_of_a_fan_outs_queued_steps(
    settings: Settings, tmp_path: Path
) -> None:
    """An executor of 2 slots, a fan-out of 24 half-second steps: its first few attempts go to the
    queue's lead lane, the rest to its bulk lane. Another workflow's step, sent once the fan-out's
    steps fill both slots, runs within the next few freed slots (its work item in the lead lane, behind
    at most the fan-out's few there), not behind the 20-odd queued before it; and every step runs once."""
    ledger = tmp_path / "ledger.txt"
    async with running_stack(settings, tmp_path, concurrency=2) as (_stack, client):
        await client.push(SLOW_FAN.replace("{ledger}", str(ledger)))
        await client.push(NEIGHBOUR.replace("{ledger}", str(ledger)))
        fan = await client.start("slowfan")

        async def fan_running() -> bool:
            return ledger.exists() and len(ledger.read_text().splitlines()) >= 2

        await until(fan_running, 60, "the fan-out's first steps running")
        neighbour = await client.start("neighbour")
        assert (await wait_for(client, neighbour.instance_id, timeout=60))["status"] == "succeeded"
        assert (await wait_for(client, fan.instance_id, timeout=120))["status"] == "succeeded"
    lines = ledger.read_text().splitlines()
    assert sorted(lines) == sorted([f"fan {k}" for k in range(24)] + ["neighbour"]), lines  # each once
    before = lines.index("neighbour")
    # FIFO (one lane), the neighbour's item would wait behind every fan-out item sent before it (~22).
    assert before <= 8, lines
