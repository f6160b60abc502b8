"""The Python client from a service's point of view: starts/s through ONE LegatoClient, and how soon a
subscriber hears that a run ended.

Starts nats-server, PostgreSQL and one trigger, scheduler and executor process (auth on, like
production); pushes a one-noop-step workflow, then:

(a) starts N runs through one ``LegatoClient`` from this one process, pipelined: up to ``--in-flight``
    ``start`` calls at once, each with its own request id (so a retried start is never a second run);
    prints accepted starts/s;
(b) once the stack is idle again, starts M runs one after the other (the next after the previous one's
    end event) with a ``subscribe_runs(status="succeeded")`` subscriber listening, and prints the time
    from each run's end to the subscriber receiving its event, p50/p99, measured two ways: from the
    event's ``at`` (the scheduler's clock when it ended the run) and from the run's ``ended_at`` in
    Postgres. Goal (issue 17): p99 <= 20 ms unloaded.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _servers import bench_servers, bench_settings, bench_stack, percentile, until
from legato.config.settings import Settings

WORKFLOW = """
id: bench-client
description: one noop step, for the client benchmark
run_strategy: {type: parallel, max_concurrency: 1000}
steps:
  - id: only
    type: noop
"""
GOAL_P99_MS = 20.0


async def run(n: int, m: int, in_flight: int, settings: Settings, log_dir: Path) -> dict[str, float]:
    async with bench_stack(settings, log_dir, timeout=30, executors=1, concurrency=64) as (
        stack,
        client,
        conn,
    ):
        await client.push(WORKFLOW)
        await asyncio.sleep(1.0)  # let the scheduler take its partitions

        # (a) pipelined starts through one client
        sem = asyncio.Semaphore(in_flight)

        async def one(i: int) -> None:
            async with sem:
                await client.start("bench-client", request_id=f"start-{i}")

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        starts_per_s = n / (time.perf_counter() - t0)

        async def all_ended() -> bool:
            done = await conn.fetchval(
                "SELECT count(*) FROM workflow_instance WHERE workflow_id = 'bench-client' "
                "AND status IN ('succeeded', 'failed', 'stopped', 'timed_out', 'skipped')"
            )
            return bool(done >= n)

        await until(all_ended, stack, what=f"{n} runs to end")
        await asyncio.sleep(1.0)  # the relay and the executor go quiet

        # (b) end -> subscriber, unloaded
        sub = await client.subscribe_runs(workflow="bench-client", status="succeeded")
        received: dict[str, tuple[float, float]] = {}  # run id -> (received at, event.at)
        for i in range(m):
            reply = await client.start("bench-client", request_id=f"latency-{i}")
            while True:
                event = await asyncio.wait_for(anext(sub), 30)
                received[event.instance_id] = (time.time(), event.at)
                if event.instance_id == reply.instance_id:
                    break
        await sub.close()
        rows = await conn.fetch(
            "SELECT id, extract(epoch FROM ended_at)::float8 AS ended FROM workflow_instance "
            "WHERE id = ANY($1::text[])",
            list(received),
        )
        from_at = [(got - at) * 1000 for got, at in received.values()]
        from_db = [(received[r["id"]][0] - r["ended"]) * 1000 for r in rows]
        return {
            "starts": n,
            "in_flight": in_flight,
            "starts_per_s": starts_per_s,
            "events": len(received),
            "at_p50": percentile(from_at, 50),
            "at_p99": percentile(from_at, 99),
            "db_p50": percentile(from_db, 50),
            "db_p99": percentile(from_db, 99),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("-n", type=int, default=3000, help="runs started in (a)")
    parser.add_argument("-m", type=int, default=200, help="runs timed one by one in (b)")
    parser.add_argument("--in-flight", type=int, default=512, help="start calls in flight at once in (a)")
    args = parser.parse_args()
    with bench_servers("legato_client", auth=True) as servers:
        r = asyncio.run(run(args.n, args.m, args.in_flight, bench_settings(servers), servers.tmp / "logs"))
    print(
        f"client (auth on): one LegatoClient in one process, {r['starts']} starts, {r['in_flight']} in flight"
    )
    print(f"  (a) accepted starts:                 {r['starts_per_s']:8.0f} /s")
    verdict = "meets" if r["at_p99"] <= GOAL_P99_MS and r["db_p99"] <= GOAL_P99_MS else "MISSES"
    print(f"  (b) run end -> subscriber has its event, unloaded ({r['events']} events):")
    print(f"      from the event's at:   p50 {r['at_p50']:6.1f} ms, p99 {r['at_p99']:6.1f} ms")
    print(f"      from the DB ended_at:  p50 {r['db_p50']:6.1f} ms, p99 {r['db_p99']:6.1f} ms")
    print(f"      goal p99 <= {GOAL_P99_MS:.0f} ms: {verdict}")


if __name__ == "__main__":
    main()
