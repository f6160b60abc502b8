"""Two versions' unloaded round trips, measured at the same time: runs started one at a time,
alternating between this checkout's code and another checkout's (``--against DIR``).

A change worth a few tenths of a millisecond on a ~8 ms round trip cannot be told apart by running
``profile.py`` before and after, back to back: on a shared machine the same code's p50 moves by 10 to 20 %
from one run of it to the next (other tenants, the host's own load), more than such a change. Here
each version has its own servers (an embedded nats-server and a durable PostgreSQL) and its own four
services, started together; the runs alternate A B B A A B …, one in flight at a time, so whatever
the machine does during the measurement falls on both versions alike. The idle stack costs the busy
one little: heartbeats, standing pull requests and lease renewals.

``--rate R``: instead, the CPU a run costs at R starts/s, where a cut of wake-ups shows (below
saturation a run's CPU is mostly its wake-ups, and the same code's figure moves with the machine by
more than such a cut). The versions take turns in slices (A B B A …) of ``--slice-seconds`` of starts
paced at R; each slice counts the CPU of that version's own processes (its services, its nats-server,
its Postgres) from its first start to its last run's end. Prints, per process kind and for all of
them, the median CPU per run of each version's slices and the median of the slice-by-slice ratios,
the context switches per run, and trigger -> step start p50 / p99. (Servers named by
``LEGATO_BENCH_NATS_URL`` / ``LEGATO_BENCH_DATABASE_URL`` are not this bench's processes: their CPU is
not counted.)

Prints each hop of the critical path (``profile.py``'s) for both versions, p50 and p99, the ratio of
the p50s, and the round trip's p50 in each third of the runs (how steady the ratio was). The other
checkout's services run with its ``libs`` and ``services`` first on ``PYTHONPATH``, and its own
migrations build its database; this checkout's client starts both versions' runs. Not a test: it
prints figures::

    git worktree add /tmp/before <commit before the change>
    python bench/interleave.py --against /tmp/before --runs 300
    python bench/interleave.py --against /tmp/before --rate 100 --slices 8
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).parent))

from _servers import (
    bench_servers,
    bench_settings,
    cpu_between,
    percentile,
    sample_cpu,
    switches_between,
    tie_to_bench,
    wait_api,
)
from legato.client import LegatoClient
from legato.config.settings import Settings
from legato.devstack.processes import Stack
from table import code_path


def _profile_module():  # type: ignore[no-untyped-def]
    # Loaded by path: the name ``profile`` is also a standard-library module's.
    spec = importlib.util.spec_from_file_location("bench_profile", Path(__file__).parent / "profile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs, as an import would be: its dataclasses look their module up by name.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


profile = _profile_module()


def own_code() -> str:
    """Where this process's ``legato`` comes from: this checkout, or the one ``PYTHONPATH`` names (as
    ``table.py --code`` runs it)."""
    module = sys.modules[LegatoClient.__module__].__file__  # <checkout>/libs/legato/client/client.py
    assert module is not None
    return f"{Path(module).resolve().parents[3]} (the code this bench imports)"


def migrate_with(checkout: Path | None, url: str) -> None:
    """Build the database at ``url`` with the migrations of ``checkout`` (None: the code this bench
    imports), in a process of that code's own."""
    script = (
        "import asyncio, sys\n"
        "from legato.store.migrations import migrate_url\n"
        "from legato.store.pool import ensure_database\n"
        "async def main(url):\n"
        "    await ensure_database(url)\n"
        "    await migrate_url(url)\n"
        "asyncio.run(main(sys.argv[1]))\n"
    )
    env = dict(os.environ) if checkout is None else {**os.environ, "PYTHONPATH": code_path(checkout)}
    # The URL is an argument, never part of the script's text.
    done = subprocess.run([sys.executable, "-c", script, url], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"the migrations of {checkout or own_code()} failed: {done.stderr.strip()[-2000:]}"
        )


@dataclass
class Version:
    """One version under measurement: its label, its code (None: this checkout), the folder its servers
    run in, and once started its services, client, database connection and runs (each run's id and when
    its start was sent)."""

    label: str
    code: Path | None
    settings: Settings
    servers: Path
    client: LegatoClient | None = None
    stack: Stack | None = None
    conn: asyncpg.Connection | None = None
    sent: dict[str, float] = field(default_factory=dict)
    ended: int = 0


@contextlib.asynccontextmanager
async def running(version: Version) -> AsyncIterator[Version]:
    """The version's services as processes on its migrated database, with a client and a connection."""
    extra = {"PYTHONPATH": code_path(version.code)} if version.code is not None else None
    await asyncio.to_thread(migrate_with, version.code, version.settings.database_url)
    stack = tie_to_bench(Stack(version.settings, version.servers / "logs", concurrency=64, extra_env=extra))
    version.stack = stack
    stack.start()
    try:
        version.client = await LegatoClient.connect(
            version.settings.nats_url,
            namespace=version.settings.namespace,
            timeout=30,
            settings=version.settings,
        )
        version.conn = await asyncpg.connect(version.settings.database_url)
        await wait_api(version.client)
        await version.client.push(profile.WORKFLOW)
        yield version
    finally:
        if version.conn is not None:
            await version.conn.close()
        if version.client is not None:
            await version.client.close()
        await asyncio.to_thread(stack.stop)


async def one_run(version: Version, request_id: str, *, measured: bool) -> None:
    """Start a run and wait until it ended (the poll that sees it is not part of the measure)."""
    assert version.client is not None and version.conn is not None
    t_sent = time.time()
    reply = await version.client.start("bench-profile", request_id=request_id)
    if measured:
        version.sent[str(reply.instance_id)] = t_sent
    version.ended += 1
    await profile.wait_ended(version.conn, version.ended)


def order(i: int) -> tuple[int, int]:
    """Which version goes first in the i-th pair: A B, B A, A B, … (neither is always second)."""
    return (0, 1) if i % 2 == 0 else (1, 0)


async def measure(versions: list[Version], runs: int, warm: int = 20) -> None:
    await asyncio.sleep(1.0)  # let each scheduler take its partitions
    for i in range(warm):
        for v in versions:
            await one_run(v, f"warm{i}", measured=False)
    for i in range(runs):
        for k in order(i):
            await one_run(versions[k], f"seq{i}", measured=True)
    hops, trips = [], []
    for v in versions:
        assert v.conn is not None
        rows = await v.conn.fetch(profile.PATH_QUERY, list(v.sent))
        hops.append(profile.hops_of(rows, v.sent))
        # The round trips in the order the runs were started: how the ratio held over the measure.
        ended = {r["id"]: float(r["run_ended_at"]) for r in rows}
        trips.append(
            [(ended[i] - t) * 1000 for i, t in sorted(v.sent.items(), key=lambda kv: kv[1]) if i in ended]
        )
        if len(rows) != runs:
            print(f"{v.label}: {len(rows)} of {runs} runs have a complete critical path")
    report(versions, hops, trips, runs)


@dataclass
class Slices:
    """What one version's slices at a rate measured: per process kind, each slice's CPU and context
    switches per run; and every run's trigger -> step start (ms)."""

    cpu: dict[str, list[float]] = field(default_factory=dict)
    switches: dict[str, list[float]] = field(default_factory=dict)
    starts: list[float] = field(default_factory=list)


ALL = "all processes"


async def one_slice(version: Version, rate: float, count: int, prefix: str, into: Slices) -> None:
    """``count`` runs started at ``rate`` on ``version``, until the last has ended: their CPU (this
    version's processes only) and their critical paths."""
    assert version.stack is not None and version.conn is not None and version.client is not None
    before = sample_cpu(version.stack, version.servers)
    sent = await profile.start_paced(version.client, rate, count, prefix)
    version.ended += count
    await profile.wait_ended(version.conn, version.ended, every=0.05)
    after = sample_cpu(version.stack, version.servers)
    cpu, switches = cpu_between(before, after), switches_between(before, after)
    for kind, seconds in [*cpu.items(), (ALL, sum(cpu.values()))]:
        into.cpu.setdefault(kind, []).append(seconds / count * 1000)
    for kind, n in [*switches.items(), (ALL, sum(switches.values()))]:
        into.switches.setdefault(kind, []).append(n / count)
    rows = await version.conn.fetch(profile.PATH_QUERY, list(sent))
    into.starts.extend(profile.hops_of(rows, sent)["trigger -> step start"])


async def measure_rate(
    versions: list[Version], rate: float, slices: int, seconds: float, warm: int = 20
) -> None:
    await asyncio.sleep(1.0)  # let each scheduler take its partitions
    for i in range(warm):
        for v in versions:
            await one_run(v, f"warm{i}", measured=False)
    count = max(1, round(rate * seconds))
    measured = [Slices(), Slices()]
    for i in range(slices):
        for k in order(i):
            await one_slice(versions[k], rate, count, f"rate{i}-", measured[k])
    report_rate(versions, measured, rate, slices, count)


def median(values: list[float]) -> float:
    return percentile(values, 50) if values else 0.0


def report_rate(
    versions: list[Version], measured: list[Slices], rate: float, slices: int, count: int
) -> None:
    a, b = measured
    print(
        f"CPU per run at {rate:g} starts/s, {slices} slices of {count} runs per version, interleaved "
        "(median of the slices; B/A: median of the slice-by-slice ratios):"
    )
    print(f"  A = {versions[0].label}, B = {versions[1].label}")
    print(f"  {'process':14} {'A ms/run':>9} {'B ms/run':>9} {'B/A':>6}   {'switches/run A':>14} {'B':>6}")
    kinds = sorted(a.cpu.keys() | b.cpu.keys(), key=lambda k: (k != ALL, -median(a.cpu.get(k, []))))
    for kind in kinds:
        ca, cb = a.cpu.get(kind, []), b.cpu.get(kind, [])
        ratios = [y / x for x, y in zip(ca, cb, strict=False) if x > 0]
        ratio = f"{median(ratios):6.2f}" if ratios else "     -"
        print(
            f"  {kind:14} {median(ca):9.3f} {median(cb):9.3f} {ratio}   "
            f"{median(a.switches.get(kind, [])):14.1f} {median(b.switches.get(kind, [])):6.1f}"
        )
    ratios = [y / x for x, y in zip(a.cpu[ALL], b.cpu[ALL], strict=True) if x > 0]
    print(f"  all processes, B/A slice by slice: {' '.join(f'{r:.2f}' for r in ratios)}")
    print(
        f"  trigger -> step start p50 / p99 (ms): A {percentile(a.starts, 50):.1f} / "
        f"{percentile(a.starts, 99):.1f}, B {percentile(b.starts, 50):.1f} / {percentile(b.starts, 99):.1f}"
    )


def thirds(values: list[float]) -> list[list[float]]:
    n = len(values)
    return [values[k * n // 3 : (k + 1) * n // 3] for k in range(3)]


def report(
    versions: list[Version], hops: list[dict[str, list[float]]], trips: list[list[float]], runs: int
) -> None:
    a, b = versions
    print(f"critical path of {runs} unloaded runs per version, interleaved one at a time (ms):")
    print(f"  A = {a.label}, B = {b.label}")
    print(f"  {'hop':34} {'A p50':>7} {'B p50':>7} {'B/A':>6} {'A p99':>8} {'B p99':>8}")
    for label, _, _ in profile.HOPS:
        pa, pb = percentile(hops[0][label], 50), percentile(hops[1][label], 50)
        ratio = f"{pb / pa:6.2f}" if pa > 0 else "     -"
        print(
            f"  {label:34} {pa:7.2f} {pb:7.2f} {ratio} "
            f"{percentile(hops[0][label], 99):8.2f} {percentile(hops[1][label], 99):8.2f}"
        )
    parts = [
        f"{percentile(ta, 50):.2f} / {percentile(tb, 50):.2f} (B/A {percentile(tb, 50) / percentile(ta, 50):.2f})"
        for ta, tb in zip(thirds(trips[0]), thirds(trips[1]), strict=True)
        if ta and tb
    ]
    print(f"  round trip p50, A / B, in each third of the runs: {'; '.join(parts)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--against", type=Path, required=True, help="the other checkout (A; B is this one)")
    parser.add_argument("--runs", type=int, default=300, help="unloaded runs per version")
    parser.add_argument(
        "--warm", type=int, default=20, help="runs per version before measuring (not counted)"
    )
    parser.add_argument("--auth", action="store_true", help="nkey auth, signed requests and work items")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="measure CPU per run at this many starts/s instead (0: off)"
    )
    parser.add_argument("--slices", type=int, default=8, help="with --rate: slices per version")
    parser.add_argument("--slice-seconds", type=float, default=5.0, help="with --rate: each slice's length")
    args = parser.parse_args()
    against = args.against.resolve()
    if args.runs < 3:
        parser.error(f"--runs {args.runs}: at least 3 (the report splits the runs in thirds)")
    if args.rate < 0 or args.slices < 1 or args.slice_seconds <= 0:
        parser.error(
            f"--rate {args.rate:g} --slices {args.slices} --slice-seconds {args.slice_seconds:g}: "
            "the rate must be >= 0, at least one slice, of more than 0 seconds"
        )
    if not (against / "libs" / "legato").is_dir():
        parser.error(f"--against {against}: not a Legato checkout (no libs/legato)")
    with (
        bench_servers("legato_interleave_a", auth=args.auth) as servers_a,
        bench_servers("legato_interleave_b", auth=args.auth) as servers_b,
    ):
        versions = [
            Version(
                f"{against} (its libs and services first on PYTHONPATH)",
                against,
                bench_settings(servers_a),
                servers_a.tmp,
            ),
            Version(own_code(), None, bench_settings(servers_b), servers_b.tmp),
        ]

        async def run() -> None:
            async with running(versions[0]), running(versions[1]):
                if args.rate > 0:
                    await measure_rate(versions, args.rate, args.slices, args.slice_seconds, args.warm)
                else:
                    await measure(versions, args.runs, args.warm)

        asyncio.run(run())


if __name__ == "__main__":
    main()
