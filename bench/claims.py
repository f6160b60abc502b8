"""What the executors' attempt claims cost nats-server: memory and disk per claim kept, and what the
bucket holds at a steady attempt rate.

Every attempt an executor starts is claimed first (``executor/claims.py``: a create-only key in the
JetStream KV bucket ``LEGATO_ATTEMPTS``), and the claim is kept for the bucket's TTL
(``LEGATO_ATTEMPT_CLAIM_TTL``). This bench makes ``-n`` claims with the executor's own ``AttemptClaims``
(``--concurrency`` at a time) against an embedded nats-server, waits ``--settle`` seconds, and prints
the server's RSS growth and the bucket's disk size per claim, and the CPU each claim cost the claiming
process (user + system, as the executor pays it; the server's CPU per claim beside it); then, for ``--rate`` attempts/s, what the
bucket holds under the default TTL and under the TTL of a week (the one before it was a setting).
Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import nats

sys.path.insert(0, str(Path(__file__).parent))

import psutil

from _servers import rss_kb
from legato.bus import Topology
from legato.bus.streams import CLAIM_TTL, provision_attempts_bucket
from legato.devstack import EmbeddedNats
from legato.devstack.nats_server import find_nats_server
from legato.executor.claims import AttemptClaims

WEEK = 7 * 24 * 3600.0


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds so far of process ``pid`` (this one by default)."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


async def measure(n: int, concurrency: int, settle: float) -> tuple[float, float, float, float, float]:
    """(RSS bytes per claim, disk bytes per claim, claims/s, the claiming process's and nats-server's
    CPU seconds per claim) for ``n`` claims."""
    tmp = Path(tempfile.mkdtemp(prefix="legato-bench-claims-"))
    server = EmbeddedNats(tmp / "nats", preferred_port=0)
    server.stop_with_parent = True
    server.start()
    try:
        assert server.proc is not None
        pid = server.proc.pid
        nc = await nats.connect(server.url)
        try:
            topology = Topology("")
            await provision_attempts_bucket(nc.jetstream(), topology)
            claims = AttemptClaims(nc.jetstream(), topology.attempts_bucket)
            await claims.open()
            await asyncio.sleep(settle)
            rss_before, disk_before = rss_kb(pid) * 1024, disk_bytes(tmp / "nats")
            ids = iter([f"att-{uuid.uuid4().hex}" for _ in range(n)])

            async def claimer() -> None:
                for attempt_id in ids:
                    assert await claims.claim(attempt_id, "bench-executor") is None

            t0, cpu0, server_cpu0 = time.perf_counter(), cpu_seconds(), cpu_seconds(pid)
            await asyncio.gather(*(claimer() for _ in range(concurrency)))
            rate = n / (time.perf_counter() - t0)
            cpu, cpu_server = (cpu_seconds() - cpu0) / n, (cpu_seconds(pid) - server_cpu0) / n
            await asyncio.sleep(settle)
            rss = rss_kb(pid) * 1024 - rss_before
            disk = disk_bytes(tmp / "nats") - disk_before
        finally:
            await nc.close()
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return rss / n, disk / n, rate, cpu, cpu_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=200_000, help="claims to make")
    parser.add_argument("--concurrency", type=int, default=64, help="claims in flight at once")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds idle before and after")
    parser.add_argument("--rate", type=float, default=100.0, help="attempts/s for the projection")
    args = parser.parse_args()
    rss, disk, rate, cpu, server = asyncio.run(measure(args.n, args.concurrency, args.settle))
    version = subprocess.run([find_nats_server(), "--version"], capture_output=True, text=True).stdout.strip()
    print(f"attempt claims: {args.n} made at {rate:.0f}/s ({version})")
    print(f"  nats-server RSS per claim kept:  {rss:6.0f} bytes")
    print(f"  bucket disk per claim kept:      {disk:6.0f} bytes")
    print(f"  CPU per claim: claiming process {cpu * 1e6:5.1f} us, nats-server {server * 1e6:5.1f} us")
    for label, ttl in ((f"the default TTL ({CLAIM_TTL / 3600:g} h)", CLAIM_TTL), ("a week's TTL", WEEK)):
        kept = args.rate * ttl
        print(
            f"  at {args.rate:g} attempts/s under {label}: {kept / 1e6:.1f} M claims kept, "
            f"~{kept * rss / 2**30:.1f} GiB of nats-server memory, ~{kept * disk / 2**30:.1f} GiB of disk"
        )


if __name__ == "__main__":
    main()
