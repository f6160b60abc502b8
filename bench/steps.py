"""Cost of each step type through the real services, and SQL steps/s.

1. Overhead per attempt against ``noop``: ``--runs`` runs of a one-step workflow per step type, one after
   the other; each attempt's own duration (executor start -> finish, as ``instance.get`` reports it) and
   the whole run (start request -> run ended). Printed as p50/p99 ms, and the attempt p50/p99 minus
   noop's: what running that type costs beyond the executor's fixed path.
2. SQL steps/s: a foreach of ``-n`` ``sql`` steps (``SELECT 1`` on a named connection to the benchmark's
   own PostgreSQL, one connection per attempt) at ``--concurrency``, against the same foreach of noops.

Services are separate processes (one executor, ``--executor-concurrency`` slots); nats-server and
PostgreSQL are embedded (or LEGATO_BENCH_NATS_URL / LEGATO_BENCH_DATABASE_URL). The plugin type
(``word_count`` of examples/plugin) is measured when it is installed (``make install`` does); the
``container`` type when podman and busybox-static are (``make container-runtime``): ``/bin/true`` in the
busybox image the tests build, with ``LEGATO_CONTAINER_EXTRA_ARGS`` (default: the tests' rlimit flags).
``--kinds noop,container`` measures only those types. Another version: run it with that checkout's
``libs`` and ``services`` first on ``PYTHONPATH`` (the services are started with it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(1, str(Path(__file__).parent.parent))  # tests.support.container_image

from _servers import bench_servers, bench_settings, percentile, tie_to_bench, wait_api
from legato.client import LegatoClient
from legato.config.settings import Settings
from legato.devstack.processes import Stack
from legato.store import ensure_database, migrate_url
from tests.support.container_image import DEFAULT_EXTRA_ARGS, IMAGE, missing_tools, podman_image

STEPS = {
    "noop": "type: noop",
    "sleep": "{type: sleep, duration: 0s}",
    "shell": "{type: shell, command: 'true'}",
    "python": "{type: python, function: 'bench_step_fn:nothing'}",
    "http": "{type: http, url: 'http://127.0.0.1:{port}/'}",
    "sql": "{type: sql, connection: bench, sql: 'SELECT 1'}",
    "word_count": "{type: word_count, text: 'a b c a'}",
    "container": "{type: container, image: 'IMAGE', command: ['/bin/true'], pull: never}".replace(
        "IMAGE", IMAGE
    ),
}
OPTIONAL = ("word_count", "container")
FOREACH = """
id: fan-{kind}
params: {n: {type: int, default: 100}}
steps:
  - id: fan
    type: foreach
    foreach:
      over: "range(params.n)"
      concurrency: {width}
      steps:
        - {id: one, {step}}
"""


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


def seconds(start: str | None, end: str | None) -> float:
    if not start or not end:
        return float("nan")
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


async def finished(client: LegatoClient, stack: Stack, instance_id: str) -> dict[str, Any]:
    """The run once it has ended, polled every 10 ms (the run latency is not rounded up to a poll)."""
    deadline = time.monotonic() + 600
    while True:
        info = await client.get(instance_id, timeline_limit=0)
        if info.get("status") in ("succeeded", "failed", "stopped", "timed_out"):
            return info
        dead = [name for name, proc in stack.services.items() if not proc.alive]
        if dead or time.monotonic() > deadline:
            raise RuntimeError(f"run {instance_id}: {info.get('status')}; exited: {dead}\n{stack.logs()}")
        await asyncio.sleep(0.01)


async def overheads(client: LegatoClient, stack: Stack, kinds: list[str], runs: int, port: int) -> None:
    rows: dict[str, tuple[list[float], list[float]]] = {}
    for kind in kinds:
        step = STEPS[kind].replace("{port}", str(port))
        await client.push(
            f"id: one-{kind}\nrun_strategy: parallel\nsteps:\n  - {{id: one, {step.strip('{}')}}}\n"
        )
        attempt_ms: list[float] = []
        run_ms: list[float] = []
        for i in range(runs + 3):  # the first 3 warm up (worker processes, connections, caches)
            t0 = time.perf_counter()
            res = await client.start(f"one-{kind}", {})
            info = await finished(client, stack, res.instance_id)
            elapsed = (time.perf_counter() - t0) * 1000
            [step_info] = info["steps"]
            if step_info["status"] != "succeeded":
                raise RuntimeError(f"{kind}: {step_info}")
            if i >= 3:
                a = step_info["attempts"][-1]
                attempt_ms.append(seconds(a["started_at"], a["ended_at"]) * 1000)
                run_ms.append(elapsed)
        rows[kind] = (attempt_ms, run_ms)
    base50, base99 = percentile(rows["noop"][0], 50), percentile(rows["noop"][0], 99)
    print(f"\noverhead per attempt, {runs} sequential runs per type (ms)")
    print(f"{'type':<12}{'attempt p50':>12}{'p99':>8}{'- noop p50':>12}{'p99':>8}{'run p50':>10}{'p99':>8}")
    for kind, (attempt_ms, run_ms) in rows.items():
        a50, a99 = percentile(attempt_ms, 50), percentile(attempt_ms, 99)
        print(
            f"{kind:<12}{a50:>12.1f}{a99:>8.1f}{a50 - base50:>12.1f}{a99 - base99:>8.1f}"
            f"{percentile(run_ms, 50):>10.1f}{percentile(run_ms, 99):>8.1f}"
        )


async def throughput(client: LegatoClient, stack: Stack, n: int, width: int) -> None:
    print(f"\nforeach of {n} steps, concurrency {width}")
    for kind in ("noop", "sql"):
        await client.push(
            FOREACH.replace("{kind}", kind)
            .replace("{width}", str(width))
            .replace("{step}", STEPS[kind].strip("{}"))
        )
        res = await client.start(f"fan-{kind}", {"n": n})
        info = await finished(client, stack, res.instance_id)
        fan = info["steps"][0]
        took = seconds(fan["started_at"], fan["ended_at"])
        print(f"  {kind:<6} {info['status']:<10} {n / took:8.0f} steps/s   ({took:.1f} s)")


async def run(args: argparse.Namespace, settings: Settings, tmp: Path) -> None:
    await ensure_database(settings.database_url)
    await migrate_url(settings.database_url)
    modules = Path(tempfile.mkdtemp(dir=tmp))
    (modules / "bench_step_fn.py").write_text("def nothing(params):\n    return None\n")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        "OTEL_SDK_DISABLED": "true",
        # The step function's module first, then whatever PYTHONPATH names (another checkout's libs and
        # services, to measure that version: ``PYTHONPATH=<checkout>/libs:<checkout>/services``).
        "PYTHONPATH": os.pathsep.join(filter(None, [str(modules), os.environ.get("PYTHONPATH")])),
        "LEGATO_CONNECTION_BENCH": settings.database_url,
        "LEGATO_CONTAINER_EXTRA_ARGS": os.environ.get("LEGATO_CONTAINER_EXTRA_ARGS", DEFAULT_EXTRA_ARGS),
    }
    stack = tie_to_bench(
        Stack(settings, tmp / "logs", executors=1, concurrency=args.executor_concurrency, extra_env=env)
    )
    stack.start()
    client = await LegatoClient.connect(settings.nats_url, namespace=settings.namespace, timeout=30)
    try:
        await wait_api(client)
        kinds = [k for k in STEPS if k not in OPTIONAL]
        if any(ep.name == "word_count" for ep in entry_points(group="legato.step_types")):
            kinds.append("word_count")
        if missing_tools() is None:
            podman_image()
            kinds.append("container")
        else:
            print(f"container: not measured ({missing_tools()})")
        if args.kinds:
            kinds = ["noop", *(k for k in args.kinds.split(",") if k in kinds and k != "noop")]
        await overheads(client, stack, kinds, args.runs, server.server_address[1])
        if args.n > 0:
            await throughput(client, stack, args.n, args.concurrency)
    finally:
        await client.close()
        await asyncio.to_thread(stack.stop)
        server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=50, help="runs per step type for the overhead")
    parser.add_argument("-n", type=int, default=2000, help="steps in the SQL foreach (0: skip it)")
    parser.add_argument("--kinds", help="comma-separated step types to measure (noop always is)")
    parser.add_argument("--concurrency", type=int, default=32, help="foreach concurrency")
    parser.add_argument("--executor-concurrency", type=int, default=16)
    args = parser.parse_args()
    with bench_servers("legato_steps") as servers:
        asyncio.run(run(args, bench_settings(servers), servers.tmp))


if __name__ == "__main__":
    main()
