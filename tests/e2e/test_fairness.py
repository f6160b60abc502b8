"""One big run must not hold up an unrelated workflow in the same partition (fair share of the scheduler)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import pytest

from legato.bus.topology import partition_of
from legato.runtime.settings import Settings
from tests.support.stack import running_stack, wait_for

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
async def test_unrelated_run_completes_while_a_10000_step_run_is_in_flight(
    settings: Settings, tmp_path: Path
) -> None:
    big_id, probe_id = same_partition_ids(settings.partitions)
    async with running_stack(settings, tmp_path, concurrency=16) as (_stack, client):
        await client.push(BIG.replace("{id}", big_id, 1))
        await client.push(PROBE.replace("{id}", probe_id, 1))
        # Warm the probe workflow (its definition cached, its actor built) so only contention is timed.
        warm = await client.start(probe_id)
        assert (await wait_for(client, warm["instance_id"]))["status"] == "succeeded"
        big = await client.start(big_id)
        conn = await asyncpg.connect(settings.database_url)
        try:
            for _ in range(600):  # the big run is in flight: thousands of its iterations exist
                n = await conn.fetchval(
                    "SELECT count(*) FROM workflow_instance WHERE parent_instance_id = $1", big["instance_id"]
                )
                if n >= 1000:
                    break
                await asyncio.sleep(0.1)
            figures = []
            for _ in range(3):
                t0 = time.monotonic()
                run = await client.start(probe_id)
                info = await wait_for(client, run["instance_id"], timeout=120)
                figures.append(time.monotonic() - t0)
                assert info["status"] == "succeeded"
                row = await conn.fetchrow(
                    "SELECT i.created_at, a.dispatched_at, a.started_at, a.ended_at, i.ended_at AS run_end "
                    "FROM workflow_instance i JOIN step_attempt a ON a.instance_id = i.id WHERE i.id = $1",
                    run["instance_id"],
                )
                print("probe", figures[-1], dict(row) if row else None)
            big_left = await conn.fetchval(
                "SELECT status FROM workflow_instance WHERE id = $1", big["instance_id"]
            )
        finally:
            await conn.close()
        print("probe seconds", figures, "big run status while probing", big_left)
        assert big_left not in ("succeeded", "failed"), "the big run ended before the probe: nothing measured"
        assert max(figures) < 5.0, figures
