"""Scheduler replicas under faults: takeover time and rebalance convergence, services as processes.

- ``rebalance``: one scheduler owns all P partitions; R-1 more join at once; prints the time until every
  partition is owned exactly once with each replica at its fair share (floor or ceil of P / R).
- ``takeover``: trigger + 2 schedulers + executor; a one-noop-step workflow on every partition; a
  replica is ``kill -9``ed (or ``SIGSTOP``ped and left stopped); prints the time from the fault until a
  new run on every partition has succeeded (runs progressing again everywhere).
- ``throughput``: on a 3-node NATS JetStream cluster (streams with 3 replicas), trigger + 1, 2 and 3
  scheduler replicas + one executor; ``--runs`` one-noop-step runs spread over every partition, started
  256 at a time; prints runs/s per configuration and the CPU seconds each kind of process used (psutil:
  user + system, with what exited children such as Postgres backends used), so the figures say which
  process saturates the machine's cores first.

Usage: ``python bench/scale.py [rebalance|takeover|throughput|all] [--partitions 64 --replicas 4]
[--lease-ttl 3] [--runs 3000 --throughput-partitions 16]``.
Takeover is bounded below by the lease time (a paused owner's lease must expire first), so the goal of
<= 5 s needs ``--lease-ttl`` around 3 (the scheduler's default is 10).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import sys
import time
from pathlib import Path

import asyncpg
import psutil

sys.path.insert(0, str(Path(__file__).parent))

from _servers import bench_servers, bench_settings, cpu_between, sample_cpu, tie_to_bench, wait_api
from legato.bus.topology import partition_of
from legato.client import LegatoClient
from legato.config.settings import Settings
from legato.devstack.processes import ServiceProcess, Stack, service_env
from legato.store import ensure_database, migrate_url

WORKFLOW = """
id: {id}
run_strategy: {{type: parallel, max_concurrency: 1000}}
steps:
  - id: only
    type: noop
"""


async def owners(conn: asyncpg.Connection) -> dict[int, str]:
    rows = await conn.fetch(
        "SELECT partition, owner FROM partition_lease WHERE expires_at > clock_timestamp()"
    )
    return {r["partition"]: r["owner"] for r in rows}


async def wait_until(cond: object, timeout: float) -> float:
    start = time.monotonic()
    while not await cond():  # type: ignore[operator]
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"not reached within {timeout}s")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


def scheduler(settings: Settings, log_dir: Path, replica: str, ttl: float) -> ServiceProcess:
    return ServiceProcess(
        replica,
        "legato.scheduler",
        ["--replica-id", replica, "--lease-ttl", str(ttl)],
        service_env(settings, log_dir / "state"),
        log_dir,
    )


async def rebalance(settings: Settings, log_dir: Path, replicas: int, ttl: float) -> float:
    parts = settings.partitions
    procs = [scheduler(settings, log_dir, f"r{i}", ttl) for i in range(replicas)]
    conn = await asyncpg.connect(settings.database_url)
    try:
        procs[0].start()

        async def first_owns_all() -> bool:
            return len(await owners(conn)) == parts

        await wait_until(first_owns_all, 120)
        for p in procs[1:]:
            p.start()
        fair = {math.floor(parts / replicas), math.ceil(parts / replicas)}

        async def balanced() -> bool:
            o = await owners(conn)
            counts = [sum(1 for v in o.values() if v == p.name) for p in procs]
            return len(o) == parts and set(counts) <= fair

        return await wait_until(balanced, 120)
    finally:
        await conn.close()
        await asyncio.gather(*(asyncio.to_thread(p.terminate) for p in procs))


async def takeover(settings: Settings, log_dir: Path, fault: str, ttl: float) -> float:
    stack = tie_to_bench(Stack(settings, log_dir, schedulers=2, lease_ttl=ttl, concurrency=32))
    stack.services.pop("signal_router", None)
    stack.start()
    client = await LegatoClient.connect(settings.nats_url, namespace=settings.namespace, actor="bench")
    conn = await asyncpg.connect(settings.database_url)
    victim = stack["scheduler"]
    try:
        await wait_api(client)
        flows: dict[int, str] = {}
        i = 0
        while len(flows) < settings.partitions:
            flows.setdefault(partition_of(f"w{i}", settings.partitions), f"w{i}")
            i += 1
        for w in flows.values():
            await client.push(WORKFLOW.format(id=w))

        async def both_own() -> bool:
            o = await owners(conn)
            return len(o) == settings.partitions and len(set(o.values())) == 2

        await wait_until(both_own, 120)
        await wave(client, list(flows.values()), "warm")
        assert victim.pid is not None
        if fault == "kill -9":
            victim.kill9()
        else:
            os.kill(victim.pid, signal.SIGSTOP)
        faulted = time.monotonic()
        await wave(client, list(flows.values()), fault.replace(" ", ""))
        return time.monotonic() - faulted
    finally:
        if fault == "SIGSTOP" and victim.alive and victim.pid is not None:
            os.kill(victim.pid, signal.SIGCONT)
        await conn.close()
        await client.close()
        await asyncio.to_thread(stack.stop)


async def wave(client: LegatoClient, flows: list[str], tag: str) -> None:
    """One run per workflow (so per partition), each until it succeeded."""
    ids = [(await client.start(w, request_id=f"{tag}-{w}")).instance_id for w in flows]
    deadline = time.monotonic() + 120
    for run_id in ids:
        while (await client.get(run_id))["status"] != "succeeded":
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} did not succeed")
            await asyncio.sleep(0.05)


def flows_per_partition(partitions: int) -> list[str]:
    """One workflow id per partition (runs are partitioned by workflow)."""
    flows: dict[int, str] = {}
    i = 0
    while len(flows) < partitions:
        flows.setdefault(partition_of(f"w{i}", partitions), f"w{i}")
        i += 1
    return list(flows.values())


async def throughput(
    settings: Settings, log_dir: Path, replicas: int, runs: int, ttl: float
) -> tuple[float, float, dict[str, float]]:
    """(runs/s, seconds, CPU seconds per process kind) for ``runs`` runs with ``replicas`` schedulers."""
    stack = tie_to_bench(
        Stack(
            settings,
            log_dir,
            schedulers=replicas,
            lease_ttl=ttl,
            concurrency=64,
            extra_env={"LEGATO_STREAM_REPLICAS": str(settings.stream_replicas)},
        )
    )
    stack.services.pop("signal_router", None)
    stack.start()
    client = await LegatoClient.connect(
        settings.nats_url, namespace=settings.namespace, actor="bench", settings=settings, timeout=30
    )
    conn = await asyncpg.connect(settings.database_url)
    try:
        await wait_api(client)
        flows = flows_per_partition(settings.partitions)
        for w in flows:
            await client.push(WORKFLOW.format(id=w))

        async def all_replicas_own() -> bool:
            # A service that exits at start (a JetStream request timing out while the fresh cluster
            # places its 3-replica streams) is restarted, as its Kubernetes pod would be.
            for name, proc in stack.services.items():
                if not proc.alive:
                    print(f"    ({name} exited during start-up; restarted)", file=sys.stderr)
                    proc.start()
            o = await owners(conn)
            return len(o) == settings.partitions and len(set(o.values())) == replicas

        await wait_until(all_replicas_own, 120)
        await wave(client, flows, "warm")
        before = sample_cpu(stack)
        machine_before = psutil.cpu_times()
        started = time.monotonic()
        sem = asyncio.Semaphore(256)
        ids: list[str] = []

        async def one(i: int) -> None:
            async with sem:
                reply = await client.start(flows[i % len(flows)], request_id=f"load{i}")
                ids.append(str(reply.instance_id))

        await asyncio.gather(*(one(i) for i in range(runs)))
        deadline = time.monotonic() + 600
        while (
            await conn.fetchval(
                "SELECT count(*) FROM workflow_instance WHERE id = ANY($1::text[]) AND status = 'succeeded'",
                ids,
            )
            < runs
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{runs} runs did not all succeed within 600 s")
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
        cpu = cpu_between(before, sample_cpu(stack))
        machine_after = psutil.cpu_times()
        # Every process on the machine (other users' included): how close to all cores it ran.
        cpu["(whole machine)"] = (
            sum(machine_after)
            - sum(machine_before)
            - (machine_after.idle + machine_after.iowait - machine_before.idle - machine_before.iowait)
        )
        return runs / elapsed, elapsed, cpu
    except BaseException:
        sys.stderr.write(stack.logs())
        raise
    finally:
        await conn.close()
        await client.close()
        await asyncio.to_thread(stack.stop)


async def prepare(settings: Settings) -> None:
    await ensure_database(settings.database_url)
    await migrate_url(settings.database_url)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "what", nargs="?", choices=["rebalance", "takeover", "throughput", "all"], default="all"
    )
    parser.add_argument("--partitions", type=int, default=64)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--takeover-partitions", type=int, default=8)
    parser.add_argument("--lease-ttl", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=3000, help="runs per throughput configuration")
    parser.add_argument("--throughput-partitions", type=int, default=16)
    args = parser.parse_args()
    if args.runs < 1 or args.throughput_partitions < 1:
        parser.error("--runs and --throughput-partitions must be at least 1")
    if args.what in ("rebalance", "all"):
        with bench_servers() as servers:
            settings = bench_settings(servers, partitions=args.partitions)
            asyncio.run(prepare(settings))
            took = asyncio.run(rebalance(settings, servers.tmp / "logs", args.replicas, args.lease_ttl))
        print(
            f"rebalance: {args.partitions} partitions, 1 replica -> {args.replicas} replicas, lease "
            f"{args.lease_ttl:g}s: converged (each partition owned once, fair shares) in {took:.1f}s"
        )
    if args.what in ("takeover", "all"):
        for fault in ("kill -9", "SIGSTOP"):
            with bench_servers() as servers:
                settings = bench_settings(servers, partitions=args.takeover_partitions)
                asyncio.run(prepare(settings))
                took = asyncio.run(takeover(settings, servers.tmp / "logs", fault, args.lease_ttl))
            print(
                f"takeover after {fault} of 1 of 2 scheduler replicas ({args.takeover_partitions} partitions, "
                f"lease {args.lease_ttl:g}s): a new run on every partition succeeded {took:.1f}s after the fault"
            )

    if args.what in ("throughput", "all"):
        print(
            f"throughput on a 3-node NATS cluster (streams with 3 replicas), {args.runs} one-noop-step "
            f"runs over {args.throughput_partitions} partitions, 1 executor, {os.cpu_count()} cores:"
        )
        for replicas in (1, 2, 3):
            with bench_servers(nats_nodes=3) as servers:
                settings = bench_settings(servers, partitions=args.throughput_partitions)
                asyncio.run(prepare(settings))
                rate, elapsed, cpu = asyncio.run(
                    throughput(settings, servers.tmp / "logs", replicas, args.runs, args.lease_ttl)
                )
            machine = cpu.pop("(whole machine)")
            total = sum(cpu.values())
            print(f"  {replicas} scheduler replica(s): {rate:6.1f} runs/s ({elapsed:.1f} s); CPU seconds:")
            for kind in sorted(cpu, key=lambda k: -cpu[k]):
                print(
                    f"    {kind:12} {cpu[kind]:7.2f} s  ({cpu[kind] / elapsed * 100:5.1f}% of a core, "
                    f"{cpu[kind] / total * 100:4.1f}% of all)"
                )
            print(f"    {'all':12} {total:7.2f} s  ({total / elapsed * 100:5.1f}% of a core)")
            cores = os.cpu_count() or 1
            print(
                f"    {'machine':12} {machine:7.2f} s  ({machine / elapsed / cores * 100:5.1f}% of all "
                f"{cores} cores busy, other processes on the machine included)"
            )


if __name__ == "__main__":
    main()
