"""What an idle stack costs: CPU per second of every process while nothing happens, by partitions.

Starts nats-server, a durable PostgreSQL and the four services as processes (as ``bench/e2e.py``
does) with ``--partitions`` scheduler partitions, pushes a one-noop-step workflow and runs it once
(so every consumer exists and every loop has turned), waits ``--settle`` seconds, then samples the
CPU time (``/proc``, user + system) of every process over ``--seconds`` of nothing, and prints it in
ms of CPU per second of wall time, per process kind, for each partition count in turn. An idle
stack still renews its pull requests (every consumer, every 2 s), heartbeats and probes; what grows
with the partitions is what a large install pays for nothing.

    python bench/idle.py --partitions 8,256 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _servers import bench_servers, bench_settings, bench_stack, cpu_between, sample_cpu, until

WORKFLOW = """
id: bench-idle
description: one noop step, run once so every consumer exists
steps:
  - id: only
    type: noop
"""


async def idle_cpu(partitions: int, seconds: float, settle: float, log_dir: Path) -> dict[str, float]:
    """ms of CPU per second of each process kind over ``seconds`` of an idle stack."""
    with bench_servers() as servers:
        settings = bench_settings(servers, partitions=partitions)
        async with bench_stack(settings, log_dir, timeout=60, concurrency=64) as (stack, client, conn):
            await client.push(WORKFLOW)
            await client.start("bench-idle", request_id="once")

            async def ended() -> bool:
                done = await conn.fetchval(
                    "SELECT count(*) FROM workflow_instance WHERE workflow_id = 'bench-idle' "
                    "AND status = 'succeeded'"
                )
                return bool(done)

            await until(ended, stack, what="the one run to end", timeout=120)
            await asyncio.sleep(settle)
            before = sample_cpu(stack)
            await asyncio.sleep(seconds)
            cpu = cpu_between(before, sample_cpu(stack))
    return {kind: 1000 * used / seconds for kind, used in cpu.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--partitions", default="8,256", help="comma-separated partition counts (default 8,256)"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="idle seconds measured (default 20)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after the run before measuring")
    args = parser.parse_args()
    counts = [int(p) for p in args.partitions.split(",") if p.strip()]
    with tempfile.TemporaryDirectory(prefix="legato-bench-idle-") as logs:
        for partitions in counts:
            per_s = asyncio.run(idle_cpu(partitions, args.seconds, args.settle, Path(logs) / str(partitions)))
            total = sum(per_s.values())
            kinds = ", ".join(f"{kind} {ms:.1f}" for kind, ms in sorted(per_s.items(), key=lambda kv: -kv[1]))
            print(
                f"idle stack, {partitions} partitions, {args.seconds:.0f} s: all processes {total:.1f} ms "
                f"of CPU per second ({kinds})",
                flush=True,
            )


if __name__ == "__main__":
    main()
