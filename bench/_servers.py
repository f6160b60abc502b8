"""Servers for the benchmarks: embedded nats-server and PostgreSQL in a temp folder, or external ones
from LEGATO_BENCH_NATS_URL / LEGATO_BENCH_DATABASE_URL.

Nothing a benchmark starts outlives it: SIGTERM (``timeout``, a cancelled job) unwinds it like Ctrl-C,
stopping its services and servers, and the kernel stops them if it is killed (``tie_to_bench``); a
stack left running would load the machine the next benchmark measures on.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from legato.client import LegatoClient
from legato.config.settings import Settings
from legato.devstack import EmbeddedNats, EmbeddedPostgres, NatsCluster
from legato.devstack.processes import Stack
from legato.security.keyring import Keyring
from legato.store import ensure_database, migrate_url


@dataclass
class BenchServers:
    nats_url: str
    database_url: str
    tmp: Path
    namespace: str
    keyring: Keyring | None = None
    stream_replicas: int = 1
    pg_log: Path | None = None  # the embedded Postgres's log (None: an external server)


@contextmanager
def bench_servers(
    db_name: str = "legato_bench",
    *,
    auth: bool = False,
    nats_nodes: int = 1,
    pg_settings: dict[str, str] | None = None,
) -> Iterator[BenchServers]:
    """``auth``: NATS requires nkeys with per-role permissions, API requests and work items are signed.
    ``nats_nodes``: 3 starts a 3-node JetStream cluster (``NatsCluster``) and streams get 3 replicas.
    ``pg_settings``: more settings of the embedded Postgres."""
    tmp = Path(tempfile.mkdtemp(prefix="legato-bench-"))
    tmp.chmod(0o711)
    started: list[EmbeddedNats | EmbeddedPostgres | NatsCluster] = []
    previous = signal.signal(signal.SIGTERM, _interrupt)
    keyring = Keyring(tmp / "keys").ensure() if auth else None
    replicas = 1
    try:
        nats_url = os.environ.get("LEGATO_BENCH_NATS_URL")
        if not nats_url and nats_nodes > 1:
            cluster = NatsCluster(
                tmp / "nats", size=nats_nodes, users=keyring.users() if keyring else None
            ).start()
            started.append(cluster)
            nats_url = cluster.url
            replicas = 3 if nats_nodes >= 3 else 1
        elif not nats_url:
            nats = EmbeddedNats(tmp / "nats", preferred_port=0, users=keyring.users() if keyring else None)
            nats.stop_with_parent = True
            started.append(nats.start())
            nats_url = nats.url
        db_url = os.environ.get("LEGATO_BENCH_DATABASE_URL")
        pg_log = None
        if not db_url:
            # Only when given: a checkout measured with ``--code`` may predate the argument.
            more = {"settings": pg_settings} if pg_settings else {}
            pg = EmbeddedPostgres(tmp / "pg", preferred_port=0, durable=True, **more)
            pg.stop_with_parent = True
            started.append(pg.start())
            db_url = pg.url(f"{db_name}_{uuid.uuid4().hex[:6]}")
            pg_log = pg.log_path
        namespace = f"bench{uuid.uuid4().hex[:6]}"
        yield BenchServers(nats_url, db_url, tmp, namespace, keyring, replicas, pg_log)
    finally:
        for server in reversed(started):
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM unwinds a benchmark as Ctrl-C does: every ``finally`` stops what it started."""
    raise KeyboardInterrupt(f"signal {signum}")


def tie_to_bench(stack: Stack) -> Stack:
    """The stack's services stop when the benchmark's process dies, kill -9 included (start it from the
    main thread). A checkout measured with ``--code``/``--against`` may predate the attribute: then its
    services are only stopped by the benchmark's own ``finally``."""
    for service in stack.services.values():
        service.stop_with_parent = True
    return stack


def bench_settings(servers: BenchServers, partitions: int = 8) -> Settings:
    """Settings for the services a benchmark starts against ``servers``."""
    return Settings(
        nats_url=servers.nats_url,
        database_url=servers.database_url,
        namespace=servers.namespace,
        partitions=partitions,
        stream_replicas=servers.stream_replicas,
        log_level="warning",
        # The benchmark's own client is the admin; each service gets its own seed (Stack).
        nats_creds=str(servers.keyring.seed_file("admin")) if servers.keyring else "",
        auth_users=str(servers.keyring.users_file) if servers.keyring else "",
        insecure=servers.keyring is None,
    )


async def wait_api(client: LegatoClient) -> None:
    """Until the trigger service answers (up to a minute)."""
    for _ in range(300):
        try:
            await client.call("workflow.list", {"limit": 1}, timeout=2.0)
            return
        except Exception:
            await asyncio.sleep(0.2)
    raise RuntimeError("API did not come up")


@asynccontextmanager
async def bench_stack(
    settings: Settings, log_dir: Path, *, timeout: float = 60.0, **stack_options: Any
) -> AsyncIterator[tuple[Stack, LegatoClient, asyncpg.Connection]]:
    """The services as processes (``Stack(settings, log_dir, **stack_options)``) on a migrated
    database, a client (with the credentials of ``settings``) once the API answers and a Postgres
    connection; all closed and stopped after."""
    await ensure_database(settings.database_url)
    await migrate_url(settings.database_url)
    stack = tie_to_bench(Stack(settings, log_dir, **stack_options))
    stack.start()
    try:
        client = await LegatoClient.connect(
            settings.nats_url, namespace=settings.namespace, timeout=timeout, settings=settings
        )
        try:
            conn = await asyncpg.connect(settings.database_url)
            try:
                await wait_api(client)
                yield stack, client, conn
            finally:
                await conn.close()
        finally:
            await client.close()
    finally:
        await asyncio.to_thread(stack.stop)


async def until(
    done: Callable[[], Awaitable[bool]], stack: Stack, *, what: str, timeout: float = 600.0
) -> None:
    """Poll ``done`` until it is true; fail at once if a service died (with its log), or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not await done():
        dead = [name for name, proc in stack.services.items() if not proc.alive]
        if dead:
            raise RuntimeError(f"waiting for {what}: {', '.join(dead)} exited\n{stack.logs()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {timeout:.0f} s")
        await asyncio.sleep(0.2)


async def paced(rate: float, count: int, send: Callable[[int], Awaitable[None]]) -> None:
    """Call ``send(i)`` for i in 0..count-1, the i-th at ``i / rate`` seconds from now, each in a task
    of its own (an open-loop arrival rate: a slow reply holds nothing back), then wait for them all.

    One loop makes each task when its time comes. (A task per send made up front, each sleeping until
    its time, started with a burst: the event loop's first pass over thousands of new tasks took tens
    of ms, and every send that fell due meanwhile went out at once, at several times the rate.) When
    the loop falls behind, the sends that are due go out together, as an open-loop arrival would."""
    t0 = time.monotonic()
    tasks: list[asyncio.Task[None]] = []
    for i in range(count):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(i)))
    await asyncio.gather(*tasks)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


@dataclass
class CpuSample:
    """Cumulative CPU seconds per (kind, pid), and what exited children left in their parents; and the
    context switches of each process's threads so far."""

    per_pid: dict[tuple[str, int], float]
    switches: dict[tuple[str, int], int] = field(default_factory=dict)


_SWITCH_LINES = ("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")


def rss_kb(pid: int) -> int:
    """A process's resident memory now, in KiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def context_switches(proc: psutil.Process) -> int:
    """Context switches (voluntary and not) of every live thread of ``proc`` so far: each is a wake-up
    (a message or a reply that arrived, a timer) or a preemption. Threads that exited are not counted."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{proc.pid}/task")
    except OSError:  # not Linux, or gone: the process's own counts
        try:
            return sum(proc.num_ctx_switches())
        except (psutil.Error, NotImplementedError):
            return 0
    for tid in tids:
        try:
            with open(f"/proc/{proc.pid}/task/{tid}/status") as f:
                total += sum(int(line.split()[1]) for line in f if line.startswith(_SWITCH_LINES))
        except (OSError, ValueError, IndexError):
            continue
    return total


def _kind_of(proc: psutil.Process, service_pids: dict[int, str]) -> str | None:
    if proc.pid in service_pids:
        return service_pids[proc.pid]
    try:
        name = proc.name()
    except psutil.Error:
        return None
    if name.startswith("nats-server"):
        return "nats-server"
    if name.startswith(("postgres", "postmaster")):
        return "postgres"
    return None


def _servers_under(folder: Path) -> set[int]:
    """The nats-server and Postgres processes started in ``folder`` (their command line names it), and
    every process under them (Postgres's backends and workers)."""
    pids: set[int] = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            if str(folder) in " ".join(proc.cmdline()):
                pids.add(proc.pid)
                pids.update(child.pid for child in proc.children(recursive=True))
        except psutil.Error:
            continue
    return pids


def sample_cpu(stack: Stack, servers: Path | None = None) -> CpuSample:
    """CPU time so far of every process this bench started: services, nats-server, Postgres (process
    kinds: a service's name without its number, ``nats-server``, ``postgres``). ``servers``: count only
    the nats-server and Postgres started in that folder (a bench running two stacks at once)."""
    service_pids = {
        proc.pid: name.rstrip("0123456789") for name, proc in stack.services.items() if proc.pid is not None
    }
    mine = _servers_under(servers) if servers is not None else None
    seen: dict[tuple[str, int], float] = {}
    switches: dict[tuple[str, int], int] = {}
    for proc in psutil.Process().children(recursive=True):
        kind = _kind_of(proc, service_pids)
        if kind is None or (mine is not None and proc.pid not in service_pids and proc.pid not in mine):
            continue
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        # Children times hold what exited children (Postgres backends, step processes) used.
        seen[(kind, proc.pid)] = t.user + t.system + t.children_user + t.children_system
        switches[(kind, proc.pid)] = context_switches(proc)
    return CpuSample(seen, switches)


def _by_kind(
    before: Mapping[tuple[str, int], float], after: Mapping[tuple[str, int], float]
) -> dict[str, float]:
    """What each process kind added between two samples (a process new in ``after`` counts from 0)."""
    by_kind: dict[str, float] = defaultdict(float)
    for key, value in after.items():
        by_kind[key[0]] += value - before.get(key, 0)
    return dict(by_kind)


def switches_between(before: CpuSample, after: CpuSample) -> dict[str, float]:
    """Context switches per process kind between two samples."""
    return _by_kind(before.switches, after.switches)


def cpu_between(before: CpuSample, after: CpuSample) -> dict[str, float]:
    """CPU seconds per process kind between two samples."""
    return _by_kind(before.per_pid, after.per_pid)


def cpu_per(cpu: Mapping[str, float], count: int, unit: str = "run") -> str:
    """``all processes 1.32 ms CPU per run (scheduler 0.520, executor 0.300, ...)``: what
    :func:`cpu_between` measured, per unit of work, by process kind, largest first."""
    count = max(count, 1)
    kinds = sorted(cpu, key=lambda k: -cpu[k])
    return (
        f"all processes {sum(cpu.values()) / count * 1000:.2f} ms CPU per {unit} ("
        + ", ".join(f"{k} {cpu[k] / count * 1000:.3f}" for k in kinds)
        + ")"
    )
