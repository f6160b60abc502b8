"""Latency of a new run while another workflow has a backlog: issue 16's overload row, measured.

Starts nats-server, PostgreSQL and the services as processes; pushes three one-noop-step workflows:
``busy`` (parallel, max_concurrency 1000), ``neighbour`` (on the same scheduler partition as ``busy``)
and ``elsewhere`` (on another partition). First, idle, it starts ``neighbour`` and ``elsewhere`` one run
at a time to get their unloaded trigger -> step start latency. Then it starts N ``busy`` runs as fast
as the API accepts them and, until they have all ended, one ``neighbour`` and one ``elsewhere`` run
every ``--every`` seconds. Prints each workflow's trigger -> step start latency (API request accepted
-> the executor began the step, from the recorded timestamps) p50 / p99 / max, idle and under the
backlog, and the backlog's own runs/s: whether a new run of an unrelated workflow waits behind
another workflow's backlog (same partition) or not (another partition).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _servers import bench_servers, bench_settings, bench_stack, percentile, until
from legato.bus.topology import partition_of
from legato.config.settings import Settings

PARTITIONS = 8
WORKFLOW = """
id: {id}
description: one noop step, for the fairness benchmark
run_strategy: {{type: parallel, max_concurrency: 1000}}
steps:
  - id: only
    type: noop
"""

LATENCY = """
SELECT i.workflow_id, extract(epoch FROM a.started_at - i.requested_at) * 1000 AS ms
FROM workflow_instance i JOIN step_attempt a ON a.instance_id = i.id
WHERE i.id = ANY($1::text[]) AND a.started_at IS NOT NULL
"""


def workflow_ids() -> tuple[str, str, str]:
    """``busy``, a workflow on its partition and one on another (the first such names)."""
    busy = "bench-busy"
    home = partition_of(busy, PARTITIONS)
    names = (f"bench-wf-{i}" for i in range(10_000))
    same = next(n for n in names if partition_of(n, PARTITIONS) == home)
    other = next(n for n in names if partition_of(n, PARTITIONS) != home)
    return busy, same, other


def summary(values: list[float]) -> str:
    if not values:
        return "no runs"
    return (
        f"p50 {percentile(values, 50):8.1f}  p99 {percentile(values, 99):8.1f}  max {max(values):8.1f} ms"
        f"  ({len(values)} runs)"
    )


async def run(n: int, every: float, settings: Settings, log_dir: Path) -> None:
    busy, same, other = workflow_ids()
    quiet = {"OTEL_SDK_DISABLED": "true"}
    async with bench_stack(settings, log_dir, concurrency=64, extra_env=quiet) as (stack, client, conn):
        for wf in (busy, same, other):
            await client.push(WORKFLOW.format(id=wf))
        await asyncio.sleep(1.5)  # the scheduler takes its partitions

        async def latencies(ids: list[str]) -> dict[str, list[float]]:
            async def ended() -> bool:
                count = await conn.fetchval(
                    "SELECT count(*) FROM workflow_instance WHERE id = ANY($1::text[]) AND ended_at IS NOT NULL",
                    ids,
                )
                return bool(count >= len(ids))

            await until(ended, stack, what=f"{len(ids)} runs to end")
            out: dict[str, list[float]] = {same: [], other: [], busy: []}
            for r in await conn.fetch(LATENCY, ids):
                out[r["workflow_id"]].append(float(r["ms"]))
            return out

        # 1. Idle: the two probe workflows, one run at a time.
        idle_ids = []
        for i in range(20):
            for wf in (same, other):
                idle_ids.append(str((await client.start(wf, request_id=f"idle-{wf}-{i}")).instance_id))
                await asyncio.sleep(every / 2)
        idle = await latencies(idle_ids)

        # 2. A backlog of ``busy``, and the probes beside it until it has drained.
        sem = asyncio.Semaphore(256)
        busy_ids: list[str] = []

        async def one(i: int) -> None:
            async with sem:
                busy_ids.append(str((await client.start(busy, request_id=f"busy-{i}")).instance_id))

        t0 = time.time()
        burst = asyncio.gather(*(one(i) for i in range(n)))
        probe_ids: list[str] = []

        async def drained() -> bool:
            count = await conn.fetchval(
                "SELECT count(*) FROM workflow_instance WHERE workflow_id = $1 AND ended_at IS NOT NULL", busy
            )
            return bool(count >= n)

        i = 0
        while not (burst.done() and await drained()):
            for wf in (same, other):
                probe_ids.append(str((await client.start(wf, request_id=f"probe-{wf}-{i}")).instance_id))
            i += 1
            await asyncio.sleep(every)
        await burst
        last = await conn.fetchval(
            "SELECT extract(epoch FROM max(ended_at)) FROM workflow_instance WHERE workflow_id = $1", busy
        )
        loaded = await latencies(probe_ids)
        busy_lat = (await latencies(busy_ids))[busy]
        print(
            f"fairness: {n} one-noop-step runs of {busy!r} started as fast as the API accepts them, "
            f"{n / (float(last) - t0):.0f} runs/s; probes every {every:g} s on {same!r} (the same scheduler "
            f"partition) and {other!r} (another)"
        )
        print("  trigger -> step start:")
        print(f"    {same:16} idle        {summary(idle[same])}")
        print(f"    {other:16} idle        {summary(idle[other])}")
        print(f"    {busy:16} its backlog {summary(busy_lat)}")
        print(f"    {same:16} beside it   {summary(loaded[same])}   (same partition)")
        print(f"    {other:16} beside it   {summary(loaded[other])}   (another partition)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=10_000, help="runs of the busy workflow")
    parser.add_argument("--every", type=float, default=0.1, help="seconds between probe starts")
    args = parser.parse_args()
    with bench_servers("legato_fairness") as servers:
        settings = bench_settings(servers, partitions=PARTITIONS)
        asyncio.run(run(args.n, args.every, settings, servers.tmp / "logs"))


if __name__ == "__main__":
    main()
