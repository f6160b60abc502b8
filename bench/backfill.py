"""Backfill throughput, and a live run's start latency in the middle of it.

Starts nats-server, PostgreSQL, and one trigger, scheduler and executor process; pushes a one-noop-step
workflow (parallel, max_concurrency 1000); measures the start latency of a few live API runs on the idle
system (request -> step started); starts an N-period hourly backfill (``--concurrency`` runs at once);
halfway through starts the same number of live runs and measures their latency again; waits until the
backfill is done. Prints backfill runs/s (first period submitted -> last run ended) and the live
latency idle vs during the backfill, and their ratio next to the goal (within 2x). The backfill's
``--priority`` is ``low`` by default (live runs start before its queued runs); ``--priority normal``
queues live runs FIFO among the backfill's, as before priorities existed. The workflow's limit
(``--limit``) is below the backfill's concurrency, so backfill runs do queue in the workflow.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).parent))

from _servers import bench_servers, bench_settings, bench_stack, percentile
from legato.client import LegatoClient
from legato.config.settings import Settings

WORKFLOW = """
id: bench-backfill
run_strategy: {type: parallel, max_concurrency: LIMIT}
params:
  hour: {type: string, default: ""}
steps:
  - id: only
    type: noop
"""
SLEEPING = """
  - id: only
    type: sleep
    duration: SECONDS
"""
LIVE = 10


async def live_latency(
    client: LegatoClient, conn: asyncpg.Connection, tag: str, parts: dict[str, list[float]] | None = None
) -> list[float]:
    ids = []
    for i in range(LIVE):
        ids.append((await client.start("bench-backfill", request_id=f"{tag}-{i}")).instance_id)
        await asyncio.sleep(0.05)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        rows = await conn.fetch(
            "SELECT extract(epoch FROM a.started_at - i.requested_at) AS s, "
            "extract(epoch FROM i.created_at - i.requested_at) AS created, "
            "extract(epoch FROM i.started_at - i.created_at) AS queued, "
            "extract(epoch FROM a.started_at - i.started_at) AS dispatched FROM workflow_instance i "
            "JOIN step_attempt a ON a.instance_id = i.id WHERE i.id = ANY($1::text[]) AND a.started_at IS NOT NULL",
            ids,
        )
        if len(rows) == len(ids):
            if parts is not None:
                for part in ("created", "queued", "dispatched"):
                    parts[part] = [float(r[part]) for r in rows]
            return [float(r["s"]) for r in rows]
        await asyncio.sleep(0.1)
    raise RuntimeError("live runs did not start")


async def run(
    n: int, concurrency: int, priority: str, limit: int, sleep: float, settings: Settings, log_dir: Path
) -> dict[str, float]:
    quiet = {"OTEL_SDK_DISABLED": "true"}
    async with bench_stack(settings, log_dir, concurrency=64, extra_env=quiet) as (_stack, client, conn):
        text = WORKFLOW.replace("LIMIT", str(limit))
        if sleep:
            text = text.split("steps:")[0] + "steps:" + SLEEPING.replace("SECONDS", f"{sleep}s")
        await client.push(text)
        await asyncio.sleep(1.5)
        idle_parts: dict[str, list[float]] = {}
        idle = await live_latency(client, conn, "idle", idle_parts)
        t0 = time.time()
        res = await client.call(
            "backfill.start",
            {
                "workflow_id": "bench-backfill",
                "start": "2020-01-01T00:00:00Z",
                "end": (datetime(2020, 1, 1, tzinfo=UTC) + timedelta(hours=n - 1)).isoformat(),
                "step": "1h",
                "params": {"hour": "${backfill.period_start}"},
                "concurrency": concurrency,
                "priority": priority,
            },
            timeout=120,
        )
        bf = res["backfill_id"]
        total = res["created"]
        busy: list[float] = []
        parts: dict[str, list[float]] = {}
        while True:
            show = await client.call("backfill.show", {"backfill_id": bf})
            if not busy and show["finished"] >= total // 2:
                busy = await live_latency(client, conn, "busy", parts)
            if show["status"] == "done":
                break
            await asyncio.sleep(0.5)
        last = await conn.fetchval(
            "SELECT extract(epoch FROM max(i.ended_at)) FROM backfill_period p JOIN workflow_instance i "
            "ON i.id = p.instance_id WHERE p.backfill_id = $1",
            bf,
        )
        return {
            "periods": total,
            "runs_per_s": total / (float(last) - t0),
            "idle_p50_s": percentile(idle, 50),
            "idle_max_s": max(idle),
            "busy_p50_s": percentile(busy, 50),
            "busy_max_s": max(busy),
            **{f"busy_{k}_p50_s": percentile(v, 50) for k, v in parts.items()},
            **{f"idle_{k}_p50_s": percentile(v, 50) for k, v in idle_parts.items()},
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=10_000, help="periods (hourly, from 2020-01-01)")
    ap.add_argument("--concurrency", type=int, default=200, help="the backfill's own limit")
    ap.add_argument("--limit", type=int, default=50, help="the workflow's parallel limit (max_concurrency)")
    ap.add_argument("--priority", choices=("low", "normal", "high"), default="low", help="the backfill's")
    ap.add_argument(
        "--sleep", type=float, default=0.0, help="the step sleeps this long instead of a noop (a full queue)"
    )
    args = ap.parse_args()
    with bench_servers("legato_bench_backfill") as servers:
        res = asyncio.run(
            run(
                args.n,
                args.concurrency,
                args.priority,
                args.limit,
                args.sleep,
                bench_settings(servers),
                servers.tmp,
            )
        )
    ratio = res["busy_p50_s"] / res["idle_p50_s"]
    print(
        f"backfill: {int(res['periods'])} periods (priority {args.priority}, step "
        f"{'sleep ' + str(args.sleep) + 's' if args.sleep else 'noop'}, backfill concurrency "
        f"{args.concurrency}, workflow limit {args.limit}), {res['runs_per_s']:.0f} runs/s; live run start "
        f"latency idle p50 {res['idle_p50_s'] * 1000:.0f} ms (max {res['idle_max_s'] * 1000:.0f}), during "
        f"the backfill p50 {res['busy_p50_s'] * 1000:.0f} ms (max {res['busy_max_s'] * 1000:.0f}); "
        f"ratio {ratio:.2f}x (goal <= 2x: {'met' if ratio <= 2 else 'NOT met'})"
    )
    for when in ("idle", "busy"):
        print(
            f"  {when}: p50 of request -> run created {res[f'{when}_created_p50_s'] * 1000:.0f} ms, "
            f"created -> started (queued) {res[f'{when}_queued_p50_s'] * 1000:.0f} ms, started -> step "
            f"started {res[f'{when}_dispatched_p50_s'] * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()
