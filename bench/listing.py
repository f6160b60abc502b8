"""What a run listing and an iteration page cost once a foreach has left many child runs.

Starts nats-server, a durable PostgreSQL and the four services as processes (as ``bench/foreach.py``
does), runs ``--top`` one-step runs, then one run of a ``-n``-iteration noop foreach (its iterations
are child runs, all newer than the top-level ones), and times the API's pages through the client, one
request at a time, ``--repeat`` times each: ``instance.list`` (the default, which leaves child runs
out, across workflows, by workflow and by status; and with ``include_children``), ``workflow.status``
of the foreach's workflow (the console's workflow page: it counts every run of the workflow, child
runs included), ``instance.get`` of the foreach's run (the console's run page: the run's and the
step's outputs hold every iteration's) and ``instance.iterations`` (the first page, one from the
middle, and a status no iteration has). Prints p50 and p99 in ms, and the rows each page returned.

    python bench/listing.py -n 100000
    PYTHONPATH=<checkout>/libs:<checkout>/services python bench/listing.py -n 100000   # another version
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _servers import bench_servers, bench_settings, bench_stack, percentile, until
from legato.client import LegatoClient
from legato.config.settings import Settings

FANOUT = """
id: bench-listing
run_strategy: {type: parallel, max_concurrency: 100}
params:
  n: {type: int, default: 0}
steps:
  - id: fan
    type: foreach
    foreach:
      over: "range(params.n)"
      concurrency: 1000
      steps:
        - id: nothing
          type: noop
"""
ONE_STEP = """
id: bench-listing-top
run_strategy: {type: parallel, max_concurrency: 100}
steps:
  - id: only
    type: noop
"""


async def timed(
    client: LegatoClient, subject: str, body: dict[str, Any], repeat: int
) -> tuple[float, float, int]:
    """p50 and p99 (ms) of ``repeat`` calls, and the rows the last one returned."""
    spent: list[float] = []
    reply: dict[str, Any] = {}
    for _ in range(repeat):
        t0 = time.perf_counter()
        reply = await client.call(subject, body)
        spent.append((time.perf_counter() - t0) * 1000)
    rows = reply.get("instances", reply.get("iterations", reply.get("steps", [])))
    return percentile(spent, 50), percentile(spent, 99), len(rows)


async def run(n: int, top: int, repeat: int, settings: Settings, log_dir: Path) -> None:
    quiet = {"OTEL_SDK_DISABLED": "true"}
    async with bench_stack(settings, log_dir, timeout=30, concurrency=128, extra_env=quiet) as (
        stack,
        client,
        conn,
    ):
        await client.push(ONE_STEP)
        await client.push(FANOUT)
        for i in range(top):
            await client.start("bench-listing-top", {}, request_id=f"top-{i}")

        async def count(sql: str) -> int:
            return int(await conn.fetchval(sql))

        async def tops_ended() -> bool:
            return (
                await count(
                    "SELECT count(*) FROM workflow_instance WHERE workflow_id = 'bench-listing-top' "
                    "AND ended_at IS NOT NULL"
                )
                == top
            )

        await until(tops_ended, stack, what="the top-level runs", timeout=120)
        res = await client.start("bench-listing", {"n": n})

        async def fan_ended() -> bool:
            info = await client.get(res.instance_id, timeline_limit=0, steps_limit=1)
            return info.get("status") in ("succeeded", "failed", "stopped", "timed_out")

        await until(fan_ended, stack, what=f"the {n}-iteration foreach", timeout=max(600.0, n / 50))
        await conn.execute("ANALYZE workflow_instance")  # as autovacuum would have by now
        pages: list[tuple[str, str, dict[str, Any]]] = [
            ("instance.list, default (no child runs)", "instance.list", {"limit": 50}),
            ("instance.list, one workflow", "instance.list", {"workflow_id": "bench-listing", "limit": 50}),
            ("instance.list, one status", "instance.list", {"status": "succeeded", "limit": 50}),
            (
                "instance.list, include_children",
                "instance.list",
                {"include_children": True, "limit": 50},
            ),
            (
                "workflow.status (the console's workflow page)",
                "workflow.status",
                {"workflow_id": "bench-listing"},
            ),
            (
                "instance.get of the foreach run",
                "instance.get",
                {"instance_id": res.instance_id, "timeline_limit": 500},
            ),
            (
                "instance.iterations, first page",
                "instance.iterations",
                {"instance_id": res.instance_id, "step_id": "fan", "limit": 100},
            ),
            (
                "instance.iterations, middle page",
                "instance.iterations",
                {"instance_id": res.instance_id, "step_id": "fan", "after": n // 2, "limit": 100},
            ),
            (
                "instance.iterations, status none has",
                "instance.iterations",
                {"instance_id": res.instance_id, "step_id": "fan", "status": "failed", "limit": 100},
            ),
        ]
        print(f"listing: {top} top-level runs, then one foreach of {n} child runs; {repeat} calls each (ms)")
        print(f"  {'page':46s} {'p50':>8s} {'p99':>8s} {'rows':>6s}")
        for name, subject, body in pages:
            p50, p99, rows = await timed(client, subject, body, repeat)
            print(f"  {name:46s} {p50:8.2f} {p99:8.2f} {rows:6d}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=100_000, help="iterations of the foreach (default 100,000)")
    parser.add_argument("--top", type=int, default=200, help="top-level runs before it (default 200)")
    parser.add_argument("--repeat", type=int, default=30, help="calls of each page (default 30)")
    args = parser.parse_args()
    with (
        bench_servers("legato_bench_listing") as servers,
        tempfile.TemporaryDirectory(prefix="legato-bench-listing-") as logs,
    ):
        asyncio.run(run(args.n, args.top, args.repeat, bench_settings(servers), Path(logs)))


if __name__ == "__main__":
    main()
