"""One run with a 100,000-iteration noop foreach at concurrency 1,000.

Prints iterations/s (foreach start -> foreach end), the scheduler's peak RSS and its growth over the
idle baseline (sampled every 100 ms from /proc), and the Postgres rows written (inserts counted by
pg_stat_user_tables over the run), the embedded nats-server's RSS growth over the run (of which the
attempt claims, one per iteration, stay for ``LEGATO_ATTEMPT_CLAIM_TTL``: ``bench/claims.py``), and the
CPU each iteration cost (all processes, from ``/proc``).
With ``--probe SECONDS``, a one-noop-step run of another workflow is started every SECONDS while the
foreach runs, and its trigger -> step start latency printed: what the foreach's dispatch window
(``LEGATO_DISPATCH_WINDOW``) costs an unrelated workflow's steps in the same executor queue. With
``--step-seconds S`` each iteration is a sleep step of S seconds instead of a noop. With ``--tables``,
what Postgres wrote per iteration, table by table (rows inserted, updated, of those HOT, deleted, from
pg_stat_user_tables), and the WAL bytes per iteration (pg_stat_wal). With ``--batches``, the workflow
actor's batches over the run (``bench/_batches.py``): how many, their messages, their compute and write
time, and how busy the actor was.
All services are separate processes; nats-server and PostgreSQL are embedded (or
LEGATO_BENCH_NATS_URL / LEGATO_BENCH_DATABASE_URL).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import asyncpg
import psutil

sys.path.insert(0, str(Path(__file__).parent))

from _batches import report, scrape, stack_options
from _servers import (
    bench_servers,
    bench_settings,
    bench_stack,
    cpu_between,
    cpu_per,
    percentile,
    rss_kb,
    sample_cpu,
)
from legato.config.settings import Settings

WORKFLOW = """
id: bench-foreach
run_strategy: sequential
params:
  n: {type: int, default: 100000}
  width: {type: int, default: 1000}
steps:
  - id: fan
    type: foreach
    foreach:
      over: "range(params.n)"
      concurrency: {width}
      steps:
        - id: nothing
          {body}
"""
NOOP = "type: noop"
SLEEP = "type: sleep\n          duration: {seconds}"

PROBE = """
id: bench-probe
run_strategy: {type: parallel, max_concurrency: 1000}
steps:
  - id: only
    type: noop
"""

PROBE_LATENCY = """
SELECT extract(epoch FROM a.started_at - i.requested_at) * 1000 AS ms,
       extract(epoch FROM a.started_at - a.dispatched_at) * 1000 AS queued_ms
FROM workflow_instance i JOIN step_attempt a ON a.instance_id = i.id
WHERE i.workflow_id = 'bench-probe' AND i.requested_at >= to_timestamp($1) AND a.started_at IS NOT NULL
"""


def nats_server_pid() -> int | None:
    """The embedded nats-server this bench started (None with LEGATO_BENCH_NATS_URL)."""
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.name().startswith("nats-server"):
                return proc.pid
        except psutil.Error:
            continue
    return None


_TABLE_STATS = """
SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del FROM pg_stat_user_tables
"""


# Per table (inserted, updated, HOT-updated, deleted), and the cluster's WAL bytes: one reading.
TableStats = tuple[dict[str, tuple[int, ...]], int]


async def table_stats(conn: asyncpg.Connection) -> TableStats:
    """Row operations by table, and the WAL bytes written so far (the cluster's)."""
    rows = {r["relname"]: tuple(int(v) for v in list(r.values())[1:]) for r in await conn.fetch(_TABLE_STATS)}
    return rows, int(await conn.fetchval("SELECT wal_bytes FROM pg_stat_wal"))


def rows_inserted(before: TableStats, after: TableStats) -> int:
    """Rows inserted into every table between two ``table_stats`` readings."""
    return sum(ops[0] - before[0].get(name, (0,))[0] for name, ops in after[0].items())


def print_table_stats(before: TableStats, after: TableStats, n: int) -> None:
    print("  Postgres per iteration, by table: inserted / updated (of which HOT) / deleted")
    for name, ops in sorted(after[0].items()):
        old = before[0].get(name, (0, 0, 0, 0))
        ins, upd, hot, dele = (a - b for a, b in zip(ops, old, strict=True))
        if ins or upd or dele:
            print(f"    {name:28s} {ins / n:5.2f} / {upd / n:5.2f} ({hot / n:5.2f}) / {dele / n:5.2f}")
    print(f"  WAL written: {(after[1] - before[1]) / n / 1024:.1f} KiB per iteration")


async def run(
    n: int,
    width: int,
    executors: int,
    settings: Settings,
    log_dir: Path,
    probe: float = 0.0,
    step_seconds: float = 0.0,
    tables: bool = False,
    batches: bool = False,
) -> None:
    quiet = {"OTEL_SDK_DISABLED": "true"}
    port, options = stack_options(batches)
    async with bench_stack(
        settings, log_dir, timeout=30, executors=executors, concurrency=128, extra_env=quiet, **options
    ) as (stack, client, conn):
        body = SLEEP.format(seconds=step_seconds) if step_seconds else NOOP
        await client.push(WORKFLOW.replace("{width}", str(width)).replace("{body}", body))
        if probe:
            await client.push(PROBE)
        await asyncio.sleep(1.5)
        pid = stack["scheduler"].pid
        assert pid is not None
        baseline = rss_kb(pid)
        peak = baseline
        nats_pid = nats_server_pid()
        nats_before = rss_kb(nats_pid) if nats_pid else 0
        stats_before = await table_stats(conn)
        batches_before = scrape(port) if batches else None
        before = sample_cpu(stack)
        res = await client.start("bench-foreach", {"n": n})
        t0 = time.time()

        async def probes() -> None:
            while True:
                await asyncio.sleep(probe)
                await client.start("bench-probe", {})

        prober = asyncio.create_task(probes()) if probe else None
        while True:
            peak = max(peak, rss_kb(pid))
            info = await client.get(res.instance_id, timeline_limit=0, steps_limit=10)
            if info.get("status") in ("succeeded", "failed", "stopped", "timed_out"):
                break
            await asyncio.sleep(0.1)
        elapsed = time.time() - t0
        if prober is not None:
            prober.cancel()
        cpu = cpu_between(before, sample_cpu(stack))
        batches_after = scrape(port) if batches else None
        fan = {s["step_id"]: s for s in info["steps"]}["fan"]
        started = fan.get("started_at")
        ended = fan.get("ended_at")
        from datetime import datetime

        step_secs = (datetime.fromisoformat(ended) - datetime.fromisoformat(started)).total_seconds()
        await asyncio.sleep(1.0)  # let pg_stat catch up
        stats_after = await table_stats(conn)
        rows = rows_inserted(stats_before, stats_after)
        print(
            f"foreach: {n} {f'{step_seconds:g} s sleep' if step_seconds else 'noop'} iterations, concurrency "
            f"{width}, {executors} executor(s): status {info['status']}"
        )
        print(f"  iterations/s (foreach step start -> end): {n / step_secs:8.0f}   ({step_secs:.1f} s)")
        print(f"  iterations/s (start request -> run end):  {n / elapsed:8.0f}")
        print(
            f"  scheduler RSS: baseline {baseline / 1024:.0f} MB, peak {peak / 1024:.0f} MB, "
            f"growth {(peak - baseline) / 1024:.0f} MB"
        )
        print(f"  Postgres rows inserted: {rows} ({rows / n:.1f} per iteration)")
        if nats_pid:
            grown = rss_kb(nats_pid) - nats_before
            print(
                f"  nats-server RSS growth: {grown / 1024:.0f} MB ({grown * 1024 / n:.0f} bytes per iteration; "
                "of it, the attempt claims stay for LEGATO_ATTEMPT_CLAIM_TTL: bench/claims.py)"
            )
        print(f"  {cpu_per(cpu, n, 'iteration')} (start request -> run end)")
        if tables:
            print_table_stats(stats_before, stats_after, n)
        if batches_before is not None and batches_after is not None:
            print("\n".join(report(batches_before, batches_after, elapsed, " (start request -> run end)")))
            print(
                "  (the scheduler's metrics were on: its CPU figure is not comparable with a run without them)"
            )
        if probe:
            await asyncio.sleep(1.0)  # the last probes start
            probed = await conn.fetch(PROBE_LATENCY, t0)
            ms = sorted(float(r["ms"]) for r in probed)
            queued = [float(r["queued_ms"]) for r in probed]
            # The services inherit the bench's environment.
            window = os.environ.get("LEGATO_DISPATCH_WINDOW", settings.dispatch_window)
            print(
                f"  another workflow's one-step run beside it (every {probe:g} s, dispatch window {window}): "
                f"trigger -> step start p50 {percentile(ms, 50):.1f} ms, p99 {percentile(ms, 99):.1f} ms, "
                f"max {ms[-1]:.1f} ms ({len(ms)} runs); of which dispatched -> executor started p50 "
                f"{percentile(queued, 50):.1f} ms, p99 {percentile(queued, 99):.1f} ms"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--executors", type=int, default=1)
    parser.add_argument(
        "--step-seconds", type=float, default=0.0, help="each iteration a sleep step this long (0: noop)"
    )
    parser.add_argument(
        "--probe", type=float, default=0.0, help="seconds between another workflow's runs beside it (0: none)"
    )
    parser.add_argument(
        "--tables",
        action="store_true",
        help="print what Postgres wrote per iteration, table by table, and its WAL",
    )
    parser.add_argument(
        "--batches",
        action="store_true",
        help="print the workflow actor's batches: size, compute and write time, busy (bench/_batches.py)",
    )
    args = parser.parse_args()
    with bench_servers("legato_foreach") as servers:
        settings = bench_settings(servers)
        logs = servers.tmp / "logs"
        asyncio.run(
            run(
                args.n,
                args.concurrency,
                args.executors,
                settings,
                logs,
                args.probe,
                args.step_seconds,
                args.tables,
                args.batches,
            )
        )


if __name__ == "__main__":
    main()
