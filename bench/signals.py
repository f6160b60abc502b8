"""Signal router throughput: a two-signal join on N/2 keys, every signal published twice.

Starts nats-server, PostgreSQL, and one trigger, scheduler, executor and signal-router process; pushes a
workflow whose one-noop-step runs are started by the join of ``left_ready`` and ``right_ready`` on
``key``; publishes N signals (N/2 keys x 2 legs), each twice under its id, in random order from several
publisher tasks (pipelined JetStream publishes); waits until every signal is stored and every tuple has
started its run. Prints signals stored per second (first publish -> last signal stored), the number of
runs (must be exactly N/2), and the signal -> run-start latency (the completing signal's stream time ->
the run's start in the scheduler) p50/p99, and the CPU each run cost (all processes, from ``/proc``:
first publish -> every run ended). A second, paced pass publishes at half the measured rate to show the
latency without a backlog (``--statements``: and the SQL statements it ran per run). In the paced pass
the two legs of a tuple go out within ``--spread`` seconds of each other (1 s), so runs start at half
the signal rate throughout; ``--spread 0`` shuffles the whole pass as the burst does (runs then start
ever faster, at the full signal rate by its end). ``--timeline`` prints its latency second by second.
``--batches``: each pass ends with what the workflow's actor did (``_batches.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import nats

sys.path.insert(0, str(Path(__file__).parent))

from _batches import report, scrape, stack_options
from _servers import (
    bench_servers,
    bench_settings,
    bench_stack,
    cpu_between,
    cpu_per,
    percentile,
    sample_cpu,
    until,
)
from _statements import STATEMENT_LOG, mark_sql, statements_between
from _statements import report as report_statements
from legato.config.settings import Settings

WORKFLOW = """
id: bench-join
description: started by the join of two signals, for the signal benchmark
run_strategy: {type: parallel, max_concurrency: 1000}
params:
  key: {type: string, required: true}
triggers:
  - type: signal
    id: both
    signals:
      - name: left_ready
      - name: right_ready
    join: [key]
    params:
      key: "${signals.left_ready.key}"
steps:
  - id: only
    type: noop
"""


async def run(
    n: int,
    publishers: int,
    settings: Settings,
    log_dir: Path,
    rate: float = 0.0,
    pg_log: Path | None = None,
    spread: float = 0.0,
    batches: bool = False,
) -> dict[str, Any]:
    """``pg_log``: Postgres logs every statement (``--statements``); print those of this pass per run.
    ``spread``: paced, the two legs of a tuple go out within this many seconds of each other (0: the
    whole pass in one random order). ``batches``: the scheduler's actor batches over the pass."""
    quiet = {"OTEL_SDK_DISABLED": "true"}
    port, options = stack_options(batches)
    async with bench_stack(settings, log_dir, timeout=30, concurrency=64, extra_env=quiet, **options) as (
        stack,
        client,
        conn,
    ):
        nc = await nats.connect(settings.nats_url)
        try:
            await client.push(WORKFLOW)
            await asyncio.sleep(1.5)  # the scheduler takes its partitions, the router its consumer
            keys = n // 2
            signals = [
                (leg, f"{leg}-{k}", {"key": f"k{k}"}) for k in range(keys) for leg in ("left", "right")
            ]
            shuffle(signals, int(rate * spread) if rate else 0)
            sends = [s for s in signals for _ in range(2)]  # each twice under its id
            js = nc.jetstream()
            prefix = f"{settings.namespace}.legato.signal."
            if pg_log is not None:
                await conn.execute(mark_sql("signals-start"))
            batches_before = scrape(port) if port else None
            before = sample_cpu(stack)
            t0 = time.time()

            step = 10 if rate else 250  # paced: small steps, or bursts would show up as latency

            async def publisher(part: list[tuple[str, str, dict[str, str]]]) -> None:
                for start in range(0, len(part), step):
                    if rate:
                        # Paced: signal i goes out at t0 + i/rate (two publishes per signal).
                        await asyncio.sleep(max(0.0, t0 + (start * publishers / 2) / rate - time.time()))
                    chunk = part[start : start + step]
                    await asyncio.gather(
                        *(
                            js.publish(
                                f"{prefix}{leg}_ready",
                                json.dumps(body).encode(),
                                headers={"Nats-Msg-Id": sid},
                            )
                            for leg, sid, body in chunk
                        )
                    )

            await asyncio.gather(*(publisher(sends[w::publishers]) for w in range(publishers)))
            published = time.time()
        finally:
            await nc.close()

        async def all_ended() -> bool:
            stored = await conn.fetchval("SELECT count(*) FROM signal")
            runs = await conn.fetchval(
                "SELECT count(*) FROM workflow_instance WHERE workflow_id = 'bench-join' AND ended_at IS NOT NULL"
            )
            return bool(stored >= len(signals) and runs >= keys)

        await until(all_ended, stack, what=f"{keys} joined runs to start and end")
        cpu = cpu_between(before, sample_cpu(stack))
        spent = time.time() - t0
        batch_lines = report(batches_before, scrape(port), spent) if batches_before is not None else []
        if pg_log is not None:
            await conn.execute(mark_sql("signals-end"))
            lines = pg_log.read_text(errors="replace").splitlines()
            print(f"  the statements of this pass ({len(signals)} signals, {keys} runs):")
            report_statements(statements_between(lines, "signals-start", "signals-end"), keys)
        await asyncio.sleep(2.0)  # an extra run would show now
        last_stored = await conn.fetchval("SELECT extract(epoch FROM max(received_at)) FROM signal")
        total_runs = await conn.fetchval(
            "SELECT count(*) FROM workflow_instance WHERE workflow_id = 'bench-join'"
        )
        lat = await conn.fetch(
            """
            SELECT extract(epoch FROM i.started_at - max(s.published_at)) * 1000 AS ms,
                   extract(epoch FROM max(s.received_at) - max(s.published_at)) * 1000 AS stored_ms,
                   extract(epoch FROM i.created_at - max(s.received_at)) * 1000 AS created_ms,
                   extract(epoch FROM i.requested_at - max(s.received_at)) * 1000 AS fired_ms,
                   extract(epoch FROM i.created_at - i.requested_at) * 1000 AS fired_created_ms,
                   extract(epoch FROM max(s.published_at)) AS published
            FROM signal_trigger_fire f
            JOIN workflow_instance i ON i.id = f.instance_id
            CROSS JOIN LATERAL jsonb_to_recordset(f.signals) AS m (name text, id text)
            JOIN signal s ON s.name = m.name AND s.id = m.id
            GROUP BY i.id, i.started_at, i.created_at
            """
        )
    ms = [float(r["ms"]) for r in lat]
    stored_ms = [float(r["stored_ms"]) for r in lat]
    created_ms = [float(r["created_ms"]) for r in lat]
    fired_ms = [float(r["fired_ms"]) for r in lat]
    fired_created_ms = [float(r["fired_created_ms"]) for r in lat]
    return {
        "signals": len(signals),
        "runs": int(total_runs),
        "publish_per_s": len(sends) / (published - t0),
        "signals_per_s": len(signals) / (float(last_stored) - t0),
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "stored_p50_ms": percentile(stored_ms, 50),
        "created_p50_ms": percentile(created_ms, 50),
        "fired_p50_ms": percentile(fired_ms, 50),
        "fired_created_p50_ms": percentile(fired_created_ms, 50),
        "cpu": cpu_per(cpu, keys, "run (two signals, each published twice)"),
        "timeline": [(float(r["published"]) - t0, float(r["ms"])) for r in lat],
        "batches": batch_lines,
    }


def print_timeline(timeline: list[tuple[float, float]]) -> None:
    """Latency by the second its completing signal was published in: a steady backlog rises with time, a
    stall shows as a few seconds far above the rest."""
    by_second: dict[int, list[float]] = {}
    for at, ms in timeline:
        by_second.setdefault(int(at), []).append(ms)
    print("    second  runs   p50 ms   p99 ms   max ms")
    for sec in sorted(by_second):
        ms = by_second[sec]
        print(f"    {sec:6d} {len(ms):5d} {percentile(ms, 50):8.1f} {percentile(ms, 99):8.1f} {max(ms):8.1f}")


def shuffle(signals: list[Any], window: int) -> None:
    """Random order, in place. ``signals`` holds each tuple's two legs side by side; with ``window``
    (signals, at least 2) each run of ``window`` signals is shuffled on its own, so the legs of a tuple
    stay within it. A pass shuffled whole completes few tuples at first and ever more as it goes (at
    time t, a signal's partner went out with probability t/T): runs start at a rate that climbs from
    zero to twice the average, the signal rate itself, at the end. Shuffled in windows, runs start at
    half the signal rate from the first window on."""
    rng = random.Random(1)
    if window < 2:
        rng.shuffle(signals)
        return
    window -= window % 2
    for start in range(0, len(signals), window):
        part = signals[start : start + window]
        rng.shuffle(part)
        signals[start : start + window] = part


def measure(
    n: int, publishers: int, rate: float, statements: bool = False, spread: float = 0.0, batches: bool = False
) -> dict[str, Any]:
    with bench_servers("legato_signals", pg_settings=STATEMENT_LOG if statements else None) as servers:
        settings = bench_settings(servers)
        pg_log = servers.pg_log if statements else None
        return asyncio.run(run(n, publishers, settings, servers.tmp / "logs", rate, pg_log, spread, batches))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=50_000, help="signals (two per key)")
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--rate", type=float, default=0.0, help="paced pass rate (signals/s); 0 = half")
    parser.add_argument("--no-paced", action="store_true", help="skip the paced latency pass")
    parser.add_argument(
        "--statements",
        action="store_true",
        help="log every SQL statement and print the paced pass's statements per run (CPU figures then skewed)",
    )
    parser.add_argument(
        "--timeline", action="store_true", help="print the paced pass's latency second by second"
    )
    parser.add_argument(
        "--batches",
        action="store_true",
        help="print the workflow actor's batches in each pass (bench/_batches.py; the scheduler's CPU then skewed)",
    )
    parser.add_argument(
        "--spread",
        type=float,
        default=1.0,
        help="paced pass: the two legs of a tuple go out within this many seconds of each other, so runs "
        "start at half the signal rate throughout (0: the whole pass in one random order, runs starting "
        "ever faster, at the signal rate by its end)",
    )
    args = parser.parse_args()
    r = measure(args.n, args.publishers, 0.0, batches=args.batches)
    print(
        f"signals: {r['signals']:.0f} signals for a 2-signal join on {r['signals'] // 2:.0f} keys, each "
        f"published twice by {args.publishers} publishers"
    )
    print(f"  publishes accepted by JetStream:            {r['publish_per_s']:8.0f} /s")
    print(f"  signals stored (first publish -> last stored): {r['signals_per_s']:8.0f} /s")
    print(f"  runs started: {r['runs']:.0f} (want exactly {r['signals'] // 2:.0f})")
    print(
        f"  signal -> run start latency (includes the backlog): p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms"
    )
    print(f"  {r['cpu']}")
    for line in r["batches"]:
        print(line)
    if args.no_paced:
        return
    rate = args.rate or max(50.0, round(r["signals_per_s"] / 2))
    n = min(args.n, int(rate * 15)) // 2 * 2
    p = measure(n, args.publishers, rate, args.statements, args.spread, args.batches)
    legs = f"legs of a tuple within {args.spread:g} s" if args.spread else "one random order"
    print(
        f"  paced at {rate:.0f} signals/s ({p['signals']:.0f} signals, {p['runs']:.0f} runs, {legs}): signal -> run "
        f"start latency p50 {p['p50_ms']:.1f} ms, p99 {p['p99_ms']:.1f} ms (p50 published -> stored "
        f"{p['stored_p50_ms']:.1f} ms, stored -> run created {p['created_p50_ms']:.1f} ms)"
    )
    print(
        f"    stored -> run created, split where the router fired the tuple (p50): stored -> fired "
        f"{p['fired_p50_ms']:.1f} ms (the router's batch), fired -> run created {p['fired_created_p50_ms']:.1f} ms "
        "(its commit, the relay, the trigger stream, the scheduler's batch)"
    )
    print(f"    {p['cpu']}")
    for line in p["batches"]:
        print(f"  {line}")
    if args.timeline:
        print_timeline(p["timeline"])


if __name__ == "__main__":
    main()
