"""A service process collects cycles less often than CPython's default, and still collects them."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from legato.runtime.entry import SERVICE_GC_THRESHOLD


def test_a_service_runs_with_the_raised_threshold_and_frozen_start_up_objects() -> None:
    # In a process of its own: freezing and thresholds are process-wide.
    code = textwrap.dedent(
        """
        import gc, weakref
        from legato.runtime.entry import run_service

        class Node:
            pass

        async def main():
            print(gc.get_threshold()[0], gc.get_freeze_count() > 0)
            a, b = Node(), Node()
            a.other, b.other = b, a  # a cycle: only the collector frees it
            gone = weakref.ref(a)
            del a, b
            junk = [[] for _ in range(3 * THRESHOLD)]  # enough allocations to trigger a young collection
            del junk
            print(gone() is None)

        raise SystemExit(run_service("probe", main(), event_loop="asyncio"))
        """
    ).replace("THRESHOLD", str(SERVICE_GC_THRESHOLD))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    threshold, frozen, collected = out.stdout.split()
    assert int(threshold) == SERVICE_GC_THRESHOLD
    assert frozen == "True"
    assert collected == "True"
