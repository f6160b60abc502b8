"""Cron trigger throughput and lateness: N workflows, each with a per-minute cron trigger.

Starts PostgreSQL (embedded unless LEGATO_BENCH_DATABASE_URL), stores N active workflows in bulk, and
runs the trigger's cron loop in this process against it with a clock shifted so that the next minute
boundary comes a few seconds after setup (no waiting for a real minute). It measures the cron loop
itself — the fire rows, cursors and StartRuns written to the outbox in Postgres; publishing the outbox
to NATS and creating the runs is the relay's and the scheduler's work, measured by bench/e2e.py.
Prints fires/s over the minute's burst (first fire -> last fire committed) and the fire lateness
(commit time past the scheduled time) p50/p99/max, for ``--minutes`` consecutive minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _servers import bench_servers, percentile
from legato.bus.topology import Topology
from legato.core import parse_definition
from legato.core.definitions import definition_digest, definition_to_json
from legato.store import create_pool, ensure_database, migrate_url
from legato.trigger.cron import CronLoop

TEMPLATE = """
id: bench-cron-0
run_strategy: {type: parallel, max_concurrency: 10}
triggers:
  - {type: cron, id: every, cron: "* * * * *", catch_up: latest}
steps:
  - {id: only, type: noop}
"""


async def store_workflows(pool: object, n: int) -> None:
    defn = parse_definition(TEMPLATE)
    body = json.loads(definition_to_json(defn))
    digest = definition_digest(defn)
    ids = [f"bench-cron-{i}" for i in range(n)]
    bodies = [json.dumps({**body, "id": wid}) for wid in ids]
    async with pool.acquire() as conn, conn.transaction():  # type: ignore[attr-defined]
        await conn.execute(
            "INSERT INTO workflow (id, active, active_version, latest_version, run_strategy, max_concurrency) "
            "SELECT id, true, 1, 1, 'parallel', 10 FROM unnest($1::text[]) AS u (id)",
            ids,
        )
        await conn.execute(
            "INSERT INTO workflow_version (workflow_id, version, digest, definition) "
            "SELECT id, 1, $2, d::jsonb FROM unnest($1::text[], $3::text[]) AS u (id, d)",
            ids,
            digest,
            bodies,
        )


async def run(n: int, minutes: int, tick: float, database_url: str) -> dict[str, float]:
    await ensure_database(database_url)
    await migrate_url(database_url)
    pool = await create_pool(database_url, max_size=4)
    try:
        t_setup = time.monotonic()
        await store_workflows(pool, n)
        # a clock shifted so the first minute boundary comes soon after the cursors are set
        real = datetime.now(UTC)
        shift = (real.replace(second=0, microsecond=0) + timedelta(minutes=1) - real) - timedelta(seconds=50)
        if shift < timedelta(0):
            shift += timedelta(minutes=1)

        def clock() -> datetime:
            return datetime.now(UTC) + shift

        cron = CronLoop(
            pool, Topology(namespace="bench", partitions=8), wake_relay=lambda: None, tick=tick, clock=clock
        )
        await cron.fire_due()  # first sight: every cursor starts now (and definitions compile)
        async with pool.acquire() as conn:  # planner statistics, as autovacuum keeps them in a live system
            await conn.execute("ANALYZE workflow; ANALYZE cron_cursor; ANALYZE cron_fire")
        setup = time.monotonic() - t_setup
        first_fire = clock().replace(second=0, microsecond=0) + timedelta(minutes=1)
        last_fire = first_fire + timedelta(minutes=minutes - 1)
        print(
            f"{n} workflows stored and seen in {setup:.1f}s; first fire in {(first_fire - clock()).total_seconds():.1f}s"
        )
        task = asyncio.create_task(cron.run())
        expected = n * minutes
        deadline = time.monotonic() + (last_fire - clock()).total_seconds() + 120
        while cron.fired < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        await cron.shutdown()
        await task
        async with pool.acquire() as conn:
            rows = await conn.fetch("SELECT fire_time, fired_at FROM cron_fire WHERE status = 'fired'")
        shift_s = shift.total_seconds()
        lateness = [(r["fired_at"] - r["fire_time"]).total_seconds() + shift_s for r in rows]
        out: dict[str, float] = {"workflows": n, "fires": len(rows), "expected": expected}
        per_minute = []
        for m in range(minutes):
            fire = first_fire + timedelta(minutes=m)
            committed = sorted(
                (r["fired_at"] - r["fire_time"]).total_seconds() + shift_s
                for r in rows
                if r["fire_time"] == fire
            )
            if committed:
                span = max(committed[-1] - committed[0], 1e-3)
                per_minute.append(len(committed) / max(span, committed[-1]))
        out["fires_per_s"] = min(per_minute) if per_minute else 0.0
        out["lateness_p50_s"] = percentile(lateness, 50)
        out["lateness_p99_s"] = percentile(lateness, 99)
        out["lateness_max_s"] = max(lateness) if lateness else float("nan")
        return out
    finally:
        await pool.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=10_000, help="workflows, each with a per-minute trigger")
    ap.add_argument("--minutes", type=int, default=1, help="consecutive minutes to measure")
    ap.add_argument("--tick", type=float, default=1.0, help="the cron loop's round interval (s)")
    args = ap.parse_args()
    with bench_servers("legato_bench_cron") as servers:
        res = asyncio.run(run(args.n, args.minutes, args.tick, servers.database_url))
    print(
        f"cron: {int(res['fires'])}/{int(res['expected'])} fires of {int(res['workflows'])} workflows; "
        f"{res['fires_per_s']:.0f} fires/s (the minute's burst, from its scheduled time); lateness "
        f"p50 {res['lateness_p50_s']:.2f}s p99 {res['lateness_p99_s']:.2f}s max {res['lateness_max_s']:.2f}s "
        f"(tick {args.tick}s)"
    )


if __name__ == "__main__":
    main()
