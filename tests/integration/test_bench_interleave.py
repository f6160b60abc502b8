"""``bench/interleave.py`` measures two versions' unloaded round trips at the same time, alternating
their runs, so that a change of a few per cent is not lost in the machine's drift between two runs.

What must hold for its figures to mean anything: the other checkout's services really run the other
checkout's code (its ``libs`` and ``services`` first on ``PYTHONPATH``), each version's runs are
measured against its own servers, neither version always goes second, and the report has every hop
of both."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil

from tests.support.bench import BENCH, load_bench_module

ROOT = BENCH.parent

# Appended to the copy's scheduler package: a scheduler started from the copy says where it was
# imported from (only when the test asks, by the variable).
MARKER = """
import os as _os
if _os.environ.get("INTERLEAVE_TEST_MARK"):
    with open(_os.environ["INTERLEAVE_TEST_MARK"], "a") as _f:
        _f.write(__file__ + "\\n")
"""


def copy_checkout(dest: Path) -> Path:
    """A copy of this checkout's code (``libs`` and ``services``), to measure against."""
    for part in ("libs", "services"):
        shutil.copytree(ROOT / part, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def interleave(
    *args: str, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH / "interleave.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_neither_version_always_goes_second() -> None:
    interleave = load_bench_module("interleave.py")
    firsts = [interleave.order(i)[0] for i in range(6)]
    assert firsts == [0, 1, 0, 1, 0, 1]
    assert all(sorted(interleave.order(i)) == [0, 1] for i in range(6))


def test_thirds_keep_every_run_in_order() -> None:
    interleave = load_bench_module("interleave.py")
    values = [float(i) for i in range(10)]
    parts = interleave.thirds(values)
    assert len(parts) == 3 and all(parts)
    assert [v for part in parts for v in part] == values


def test_a_short_interleaved_run_measures_both_versions_each_with_its_own_code(tmp_path: Path) -> None:
    other = copy_checkout(tmp_path / "other")
    with open(other / "services" / "legato" / "scheduler" / "__init__.py", "a") as f:
        f.write(MARKER)
    mark = tmp_path / "imported-from"
    env = {**os.environ, "INTERLEAVE_TEST_MARK": str(mark)}
    done = interleave("--against", str(other), "--runs", "6", "--warm", "1", env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "critical path of 6 unloaded runs per version" in out
    assert f"A = {other} (its libs and services first on PYTHONPATH)" in out
    assert f"B = {ROOT} (the code this bench imports)" in out
    for hop in ("client -> API accepted", "dispatched -> executor started", "round trip: sent -> run ended"):
        line = next(line for line in out.splitlines() if line.strip().startswith(hop))
        a_p50, b_p50, ratio = (float(x) for x in line[len(hop) + 2 :].split()[:3])
        assert a_p50 > 0 and b_p50 > 0 and ratio > 0
    assert "of 6 runs have a complete critical path" not in out  # every run of both was measured
    assert "in each third of the runs" in out
    # The copy's scheduler (A) ran the copy's code; this checkout's scheduler (B) never imports the marker.
    imported = mark.read_text().split()
    assert imported and all(Path(p).is_relative_to(other) for p in imported)
    # A checkout that is not one is refused with what is wrong.
    bad = interleave("--against", str(tmp_path / "nowhere"), timeout=60)
    assert bad.returncode == 2 and "not a Legato checkout" in bad.stderr


def test_the_other_checkouts_failing_migrations_are_reported(tmp_path: Path) -> None:
    other = copy_checkout(tmp_path / "broken")
    (other / "libs" / "legato" / "store" / "migrations" / "9999_broken.sql").write_text(
        "SELECT FROM nowhere;"
    )
    done = interleave("--against", str(other), "--runs", "3", "--warm", "0")
    assert done.returncode != 0
    assert f"the migrations of {other} failed" in done.stderr
    assert "nowhere" in done.stderr  # Postgres's own words, not only a return code


def test_two_stacks_servers_are_told_apart() -> None:
    """With two stacks up, each version's CPU counts its own nats-server and Postgres (their command
    lines name their folder) and the processes under them, never the other's."""
    servers = load_bench_module("_servers.py")
    with servers.bench_servers("legato_apart_a") as a, servers.bench_servers("legato_apart_b") as b:
        mine, theirs = servers._servers_under(a.tmp), servers._servers_under(b.tmp)
        assert mine and theirs and not mine & theirs
        for pids in (mine, theirs):
            names = {psutil.Process(pid).name() for pid in pids}
            assert any(n.startswith("nats-server") for n in names)
            assert any(n.startswith(("postgres", "postmaster")) for n in names)
            assert len(pids) > 3  # Postgres's own processes under its postmaster count too


def test_at_a_rate_each_version_gets_its_cpu_per_run_by_process(tmp_path: Path) -> None:
    """``--rate``: slices of paced starts, alternated; the report has every process kind's CPU per run
    and context switches for both versions, one ratio per slice pair, and the step start's p50 / p99."""
    other = copy_checkout(tmp_path / "other")
    done = interleave(
        "--against", str(other), "--rate", "20", "--slices", "2", "--slice-seconds", "1", "--warm", "1"
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "CPU per run at 20 starts/s, 2 slices of 20 runs per version, interleaved" in out
    for kind in ("all processes", "scheduler", "executor", "trigger", "nats-server", "postgres"):
        line = next(line for line in out.splitlines() if line.strip().startswith(kind + " "))
        a_ms, b_ms, ratio, a_sw, b_sw = (float(x) for x in line.split()[-5:])
        assert a_ms > 0 and b_ms > 0 and ratio > 0 and a_sw > 0 and b_sw > 0, line
    ratios = next(line for line in out.splitlines() if "B/A slice by slice" in line)
    assert len(ratios.split(":")[1].split()) == 2
    assert "trigger -> step start p50 / p99 (ms): A " in out
    bad = subprocess.run(
        [
            sys.executable,
            str(BENCH / "interleave.py"),
            "--against",
            str(other),
            "--rate",
            "10",
            "--slices",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert bad.returncode == 2 and "at least one slice" in bad.stderr
