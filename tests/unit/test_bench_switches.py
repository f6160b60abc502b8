"""``profile.py`` prints context switches per run by process kind, read from every thread's
``/proc/<pid>/task/<tid>/status``: a changed format must not silently count nothing."""

from __future__ import annotations

import threading
import time

import psutil

from tests.support.bench import load_bench_module


def load():  # type: ignore[no-untyped-def]
    return load_bench_module("_servers.py")


def test_every_threads_switches_are_counted() -> None:
    servers = load()
    me = psutil.Process()
    before = servers.context_switches(me)
    for _ in range(20):
        time.sleep(0.001)  # each sleep is a voluntary switch of this thread
    assert servers.context_switches(me) >= before + 20

    done = threading.Event()

    def other() -> None:
        for _ in range(20):
            time.sleep(0.001)
        done.wait()

    thread = threading.Thread(target=other)
    start = servers.context_switches(me)
    thread.start()
    time.sleep(0.2)  # this thread switches once; the other, twenty times
    counted = servers.context_switches(me)
    done.set()
    thread.join()
    assert counted >= start + 20


def test_switches_between_samples_by_kind_new_processes_from_zero() -> None:
    servers = load()
    before = servers.CpuSample({}, {("scheduler", 1): 100, ("postgres", 2): 50})
    after = servers.CpuSample({}, {("scheduler", 1): 130, ("postgres", 2): 55, ("postgres", 3): 7})
    assert servers.switches_between(before, after) == {"scheduler": 30, "postgres": 12}


def test_cpu_per_unit_of_work_by_kind_largest_first() -> None:
    servers = load()
    before = servers.CpuSample({("scheduler", 1): 1.0, ("postgres", 2): 0.5})
    after = servers.CpuSample({("scheduler", 1): 1.3, ("postgres", 2): 0.6, ("executor", 3): 0.2})
    line = servers.cpu_per(servers.cpu_between(before, after), 100, "iteration")
    assert line == (
        "all processes 6.00 ms CPU per iteration (scheduler 3.000, executor 2.000, postgres 1.000)"
    )
