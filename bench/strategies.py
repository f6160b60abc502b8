"""Run strategies under bursts: 1,000 triggers on one workflow of one-noop-step runs, per strategy.

Starts nats-server, PostgreSQL and one trigger, one scheduler and one executor process. For each
strategy it pushes a workflow with that strategy, sends N starts through the API in bursts (``--burst``
at once, ``--gap`` seconds apart), waits until every run ended, and prints, from the timestamps
recorded in Postgres:

- triggers/s absorbed: N / the time bursts took, each from its first start request to the scheduler
  recording its last run;
- end -> next start: for each run that waited in the queue and started when another run ended, the
  time from that run's step end (the executor's report, ``step_attempt.ended_at``) to the next run's
  start (``workflow_instance.started_at``, recorded in the transaction that decided it), p50/p99;
- executor gap: the same, up to the next run's step start as the executor saw it (adds the trip
  through the work queue).

Goal: end -> next start p99 <= 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).parent))

from _servers import bench_servers, bench_settings, bench_stack, percentile
from legato.client import LegatoClient
from legato.config.settings import Settings
from legato.core.model import RUN_STRATEGIES

STRATEGIES = RUN_STRATEGIES
TERMINAL = "('succeeded', 'failed', 'stopped', 'timed_out', 'skipped')"

WORKFLOW = """
id: {id}
run_strategy: {strategy}
steps:
  - id: only
    type: noop
"""


def gaps(rows: list[asyncpg.Record]) -> tuple[list[float], list[float]]:
    """(end -> next run start, end -> next step start as the executor saw it), in ms, for every start
    that an end made possible: the run was already queued when the latest end before its start came."""
    # (when, the executor reported it) - a cancelled step's end is the scheduler's (last_only stops the
    # running run in the transaction that starts the new one).
    ends = sorted(
        (r["step_end"], r["attempt_status"] in ("succeeded", "failed"))
        for r in rows
        if r["step_end"] is not None
    )
    decided: list[float] = []
    seen_by_executor: list[float] = []
    j = 0
    latest_end = None
    by_executor = False
    for r in sorted((r for r in rows if r["started_at"] is not None), key=lambda r: r["started_at"]):
        while j < len(ends) and ends[j][0] <= r["started_at"]:
            latest_end, by_executor = ends[j]
            j += 1
        if latest_end is None or r["created_at"] >= latest_end:
            continue  # started on arrival, not because a slot was freed
        decided.append((r["started_at"] - latest_end).total_seconds() * 1000)
        if r["step_start"] is not None and by_executor:
            seen_by_executor.append((r["step_start"] - latest_end).total_seconds() * 1000)
    return decided, seen_by_executor


async def one_strategy(
    client: LegatoClient, conn: asyncpg.Connection, strategy: str, n: int, burst: int, gap: float, limit: int
) -> dict[str, Any]:
    wf = f"bench-{strategy.replace('_', '-')}"
    spec = f"{{type: parallel, max_concurrency: {limit}}}" if strategy == "parallel" else strategy
    await client.push(WORKFLOW.format(id=wf, strategy=spec))
    await asyncio.sleep(0.5)
    bursts: list[tuple[float, list[str]]] = []
    for start in range(0, n, burst):
        sent = time.time()
        res = await asyncio.gather(
            *(client.start(wf, request_id=f"{wf}-{i}") for i in range(start, min(n, start + burst)))
        )
        bursts.append((sent, [r.instance_id for r in res]))
        if gap:
            await asyncio.sleep(gap)
    while await conn.fetchval("SELECT count(*) FROM workflow_instance WHERE workflow_id = $1", wf) < n:
        await asyncio.sleep(0.05)
    # Absorbed: each burst from its first request to the scheduler recording its last run (the gaps
    # between bursts are the arrival pattern, not the system's time).
    busy = 0.0
    for sent, ids in bursts:
        last = await conn.fetchval(
            "SELECT extract(epoch FROM max(created_at)) FROM workflow_instance WHERE id = ANY($1::text[])",
            ids,
        )
        busy += float(last) - sent
    while (
        await conn.fetchval(
            f"SELECT count(*) FROM workflow_instance WHERE workflow_id = $1 AND status IN {TERMINAL}", wf
        )
        < n
    ):
        await asyncio.sleep(0.1)
    rows = await conn.fetch(
        "SELECT i.id, i.created_at, i.started_at, i.status, a.started_at AS step_start, a.ended_at AS step_end, "
        "a.status AS attempt_status "
        "FROM workflow_instance i LEFT JOIN step_attempt a ON a.instance_id = i.id WHERE i.workflow_id = $1",
        wf,
    )
    decided, seen = gaps(list(rows))
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return {
        "strategy": strategy if strategy != "parallel" else f"parallel({limit})",
        "absorbed_per_s": n / busy,
        "statuses": statuses,
        "decided": decided,
        "seen": seen,
    }


async def run(args: argparse.Namespace, settings: Settings, log_dir: Path) -> list[dict[str, Any]]:
    quiet = {"OTEL_SDK_DISABLED": "true"}
    async with bench_stack(settings, log_dir, timeout=30, concurrency=64, extra_env=quiet) as (
        _,
        client,
        conn,
    ):
        out = []
        for strategy in args.strategies:
            r = await one_strategy(client, conn, strategy, args.n, args.burst, args.gap, args.max_concurrency)
            print_result(r)
            out.append(r)
        return out


def print_result(r: dict[str, Any]) -> None:
    def pct(values: list[float]) -> str:
        if not values:
            return "n/a (no run waited for a slot a step end freed)"
        return f"p50 {percentile(values, 50):6.1f} ms, p99 {percentile(values, 99):6.1f} ms  ({len(values)} starts)"

    counts = ", ".join(f"{k} {v}" for k, v in sorted(r["statuses"].items()))
    print(f"{r['strategy']:<20} absorbed {r['absorbed_per_s']:7.0f} triggers/s   [{counts}]")
    print(f"{'':<20} end -> next run start (Postgres):  {pct(r['decided'])}")
    print(f"{'':<20} end -> next step start (executor): {pct(r['seen'])}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=1000, help="triggers per strategy")
    parser.add_argument("--burst", type=int, default=100, help="starts sent at once")
    parser.add_argument("--gap", type=float, default=0.2, help="seconds between bursts")
    parser.add_argument("--max-concurrency", type=int, default=4, help="limit of the parallel strategy")
    parser.add_argument("--strategies", nargs="*", default=list(STRATEGIES), choices=STRATEGIES)
    args = parser.parse_args()
    print(
        f"run strategies: {args.n} triggers per strategy in bursts of {args.burst} every {args.gap}s, "
        "one noop step per run; goal end -> next run start p99 <= 20 ms"
    )
    with bench_servers("legato_strategies") as servers:
        settings = bench_settings(servers)
        asyncio.run(run(args, settings, servers.tmp / "logs"))


if __name__ == "__main__":
    main()
