"""End-to-end throughput: N one-noop-step runs started through the API, all services as processes.

Starts nats-server, PostgreSQL, and one trigger, one scheduler and one executor process; pushes a
one-noop-step workflow with the parallel strategy (max_concurrency 1000); starts N runs through the
NATS API as fast as it accepts them (bounded in-flight requests); waits until every run ended; prints
runs/s from the first start to the last completion and the trigger->step-start latency (API request
accepted -> the executor began the step) p50/p99, read from the recorded timestamps, and the CPU each
run cost (all processes, from ``/proc``: first start -> every run ended).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _servers import (
    bench_servers,
    bench_settings,
    bench_stack,
    cpu_between,
    cpu_per,
    paced,
    percentile,
    sample_cpu,
    until,
)
from legato.config.settings import Settings
from legato.devstack.otlp_sink import OtlpSink

WORKFLOW = """
id: bench-noop
description: one noop step, for the end-to-end benchmark
run_strategy: {type: parallel, max_concurrency: 1000}
steps:
  - id: only
    type: noop
"""


async def run(
    n: int,
    in_flight: int,
    settings: Settings,
    log_dir: Path,
    executors: int,
    extra: dict[str, str],
    rate: float = 0.0,
) -> dict[str, Any]:
    async with bench_stack(
        settings, log_dir, timeout=30, executors=executors, concurrency=64, extra_env=extra
    ) as (stack, client, conn):
        await client.push(WORKFLOW)
        await asyncio.sleep(1.0)  # let the scheduler take its partitions
        sem = asyncio.Semaphore(in_flight)
        before = sample_cpu(stack)
        t0 = time.time()

        async def one(i: int) -> None:
            async with sem:
                await client.start("bench-noop", request_id=f"b{i}")

        if rate:
            await paced(rate, n, one)  # request i goes out at t0 + i/rate (open loop, not a backlog)
        else:
            await asyncio.gather(*(one(i) for i in range(n)))
        accepted = time.time()

        async def all_ended() -> bool:
            done = await conn.fetchval(
                "SELECT count(*) FROM workflow_instance WHERE workflow_id = 'bench-noop' "
                "AND status IN ('succeeded', 'failed', 'stopped', 'timed_out', 'skipped')"
            )
            return bool(done >= n)

        await until(all_ended, stack, what=f"{n} runs to end")
        cpu = cpu_between(before, sample_cpu(stack))
        last = await conn.fetchval("SELECT extract(epoch FROM max(ended_at)) FROM workflow_instance")
        failed = await conn.fetchval(
            "SELECT count(*) FROM workflow_instance WHERE workflow_id = 'bench-noop' AND status <> 'succeeded'"
        )
        dead = await conn.fetchval("SELECT count(*) FROM dead_letter")
        lat = await conn.fetch(
            "SELECT extract(epoch FROM a.started_at - i.requested_at) * 1000 AS ms "
            "FROM workflow_instance i JOIN step_attempt a ON a.instance_id = i.id "
            "WHERE i.workflow_id = 'bench-noop' AND a.started_at IS NOT NULL"
        )
    ms = [float(r["ms"]) for r in lat]
    return {
        "runs": n,
        "failed": int(failed),
        "dead_letters": int(dead),
        "api_accept_per_s": n / (accepted - t0),
        "runs_per_s": n / (float(last) - t0),
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "cpu": cpu_per(cpu, n),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument("--in-flight", type=int, default=256)
    parser.add_argument("--executors", type=int, default=1)
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="pace starts at this rate (runs/s) for the latency run; 0 = half the measured throughput",
    )
    parser.add_argument("--no-paced", action="store_true", help="skip the paced latency run")
    parser.add_argument(
        "--compare-auth",
        action="store_true",
        help="run without credentials, then with nkey auth, per-role permissions and signed requests "
        "and work items (the default is with them)",
    )
    parser.add_argument("--no-auth", action="store_true", help="run without credentials")
    parser.add_argument(
        "--compare-tracing",
        action="store_true",
        help="run with the tracer off, on without an exporter, exporting every trace over OTLP/HTTP to a "
        "collector sink, and exporting 10%% of traces (parentbased_traceidratio)",
    )
    args = parser.parse_args()
    modes = ["off", "on", "exported", "sampled"] if args.compare_tracing else ["on"]
    auths = [False, True] if args.compare_auth else [not args.no_auth]
    for mode, auth in [(m, a) for m in modes for a in auths]:
        label = f"tracing {mode}, auth {'on' if auth else 'off'}"
        args.auth = auth
        r = measure(args, mode, 0.0)
        print(
            f"e2e ({label}): {r['runs']} one-noop-step runs started as fast as the API accepts them, "
            f"{r['failed']} not succeeded, {r['dead_letters']} dead letters"
        )
        print(f"  API accepted starts:        {r['api_accept_per_s']:8.0f} /s")
        print(f"  runs/s (first start -> last completion): {r['runs_per_s']:8.0f}")
        print(
            f"  trigger -> step start latency (includes the backlog): p50 {r['p50_ms']:.1f} ms, "
            f"p99 {r['p99_ms']:.1f} ms"
        )
        print(f"  {r['cpu']}")
        if args.no_paced:
            continue
        rate = args.rate or max(10.0, round(r["runs_per_s"] / 2))
        p = measure(args, mode, rate)
        print(
            f"  paced at {rate:.0f} starts/s ({p['runs']} runs, {p['failed']} not succeeded): trigger -> step "
            f"start latency p50 {p['p50_ms']:.1f} ms, p99 {p['p99_ms']:.1f} ms"
        )
        print(f"    {p['cpu']}")


def measure(args: argparse.Namespace, mode: str, rate: float) -> dict[str, Any]:
    n = args.n if not rate else min(args.n, int(rate * 20))
    with bench_servers("legato_e2e", auth=args.auth) as servers, OtlpSink(decode=False) as sink:
        extra = {
            "off": {"OTEL_SDK_DISABLED": "true"},
            "on": {},
            "exported": sink.env(),
            "sampled": {
                **sink.env(),
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "0.1",
            },
        }[mode]
        settings = bench_settings(servers)
        result = asyncio.run(
            run(n, args.in_flight, settings, servers.tmp / "logs", args.executors, extra, rate)
        )
        if mode in ("exported", "sampled"):
            print(f"  the collector sink received {sink.requests} OTLP requests, {sink.bytes / 1e6:.1f} MB")
        return result


if __name__ == "__main__":
    main()
