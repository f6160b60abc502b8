"""Nothing a benchmark starts outlives it: a stack left running (after ``timeout`` stopped a bench, or
kill -9) loads the machine the next benchmark measures on, and skews its figures.

- A service process started with ``stop_with_parent`` gets SIGTERM from the kernel when the process
  that started it dies, kill -9 included; without it, it lives on (what benches did before).
- ``bench_servers`` turns SIGTERM into the unwinding Ctrl-C gives, so every ``finally`` of the bench
  (stopping its services, then its servers) runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

from tests.support.bench import BENCH

ROOT = BENCH.parent

# A parent that starts one long-lived child as benches start services, prints its pid, and waits.
PARENT = """
import os, sys, time
from pathlib import Path
from legato.devstack.processes import ServiceProcess

child = ServiceProcess("sleeper", "http.server", ["0", "--bind", "127.0.0.1"], dict(os.environ), Path(sys.argv[1]))
child.stop_with_parent = sys.argv[2] == "tied"
child.start()
print(child.pid, flush=True)
time.sleep(120)
"""


def _env() -> dict[str, str]:
    paths = [str(ROOT / "libs"), str(ROOT / "services"), str(ROOT)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")])}


def _child_of_killed_parent(tmp_path: Path, mode: str) -> psutil.Process:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path), mode], env=_env(), stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child = psutil.Process(int(parent.stdout.readline()))
    assert child.is_running()
    parent.send_signal(signal.SIGKILL)
    parent.wait(10)
    return child


def test_a_tied_service_stops_when_its_benchmark_is_killed(tmp_path: Path) -> None:
    child = _child_of_killed_parent(tmp_path, "tied")
    try:
        child.wait(10)  # psutil.TimeoutExpired if it outlived its parent
    finally:
        if child.is_running():
            child.kill()


def test_an_untied_service_outlives_its_parent(tmp_path: Path) -> None:
    """The control: without ``stop_with_parent`` the child is orphaned, not stopped (tests that kill a
    pytest worker's parent are not the place for it; ``ServiceProcess`` keeps the default)."""
    child = _child_of_killed_parent(tmp_path, "untied")
    try:
        time.sleep(1.0)
        assert child.is_running() and child.status() != psutil.STATUS_ZOMBIE
    finally:
        child.kill()
        child.wait(10)


BENCH_SCRIPT = """
import sys, time
sys.path.insert(0, sys.argv[1])
from _servers import bench_servers

with bench_servers("legato_bench_cleanup") as servers:
    try:
        print("ready", flush=True)
        time.sleep(60)
    finally:
        print("unwound", flush=True)
print("after", flush=True)
"""


def test_sigterm_unwinds_a_benchmark(tmp_path: Path) -> None:
    # External servers named: bench_servers starts none, so only its unwinding is under test.
    env = {
        **_env(),
        "LEGATO_BENCH_NATS_URL": "nats://127.0.0.1:1",
        "LEGATO_BENCH_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
    }
    bench = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(BENCH_SCRIPT), str(BENCH)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert bench.stdout is not None
    assert bench.stdout.readline().strip() == "ready"
    bench.send_signal(signal.SIGTERM)
    out, err = bench.communicate(timeout=20)
    assert "unwound" in out, err
    assert "after" not in out  # it stops: the interrupt propagates once everything unwound
    assert bench.returncode != 0
