"""``bench/floor.py`` times each I/O operation of a run's critical path alone; ``--gaps`` spaces them,
because an unloaded run meets every process cold. The gap must separate the operations and never be
part of what is timed, and every gap gets its own column of every operation."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import time

from tests.support.bench import BENCH, load_bench_module

ROOT = BENCH.parent


def test_the_gap_spaces_operations_and_is_not_timed() -> None:
    floor = load_bench_module("floor.py")
    started: list[float] = []

    async def op(i: int) -> None:
        started.append(time.perf_counter())

    p50 = asyncio.run(floor.timed(5, op, gap=0.02))
    measured = started[-5:]  # after the 20 warm-up calls
    assert all(b - a >= 0.019 for a, b in itertools.pairwise(measured))
    assert p50 < 5.0  # ms: the operation, not the 20 ms before it


def test_every_gap_gets_a_column_of_every_operation() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "floor.py"), "-n", "5", "--gaps", "0,2"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    header = next(line for line in lines if "gap (ms)" in line)
    assert header.split()[-2:] == ["0", "2"]
    for label in ("postgres durable write (one statement)", "jetstream KV create (the executor's claim)"):
        row = next(line for line in lines if line.strip().startswith(label))
        figures = [float(x) for x in row[len(label) + 2 :].split()]
        assert len(figures) == 2 and all(f > 0 for f in figures)
    path = next(line for line in lines if "along a run's path" in line)
    assert len(path.split(":")[-1].split("/")) == 2
    bad = subprocess.run(
        [sys.executable, str(BENCH / "floor.py"), "--gaps", "-5"], capture_output=True, text=True, cwd=ROOT
    )
    assert bad.returncode == 2 and "--gaps" in bad.stderr
