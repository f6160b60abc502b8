"""Where a run's time and CPU go: the critical path hop by hop, and CPU per run for every process.

Starts nats-server, a durable PostgreSQL and the four services as processes (as ``bench/e2e.py``
does), pushes a one-noop-step workflow, then:

1. **Unloaded round trips**: ``--sequential`` runs started one at a time; each run's critical path is
   split into hops from the timestamps the services record (all on one machine, one clock):

   | hop | from → to |
   |---|---|
   | client → API | the client sent ``instance.start`` → the trigger accepted it (``requested_at``) |
   | API → run started | accepted → the scheduler committed the run as started (outbox relay, trigger
     stream, scheduler batch and transaction) |
   | run started → work published | the scheduler's start → the attempt row's ``dispatched_at`` |
   | dispatched → executor started | the attempt committed → the executor began the step (outbox relay,
     work stream, executor fetch) |
   | step body | executor started → executor finished the step |
   | result → run ended | the executor's finish → the scheduler committed the run's end (result
     publish, events stream, scheduler batch and transaction) |

   and the round trip is the client's send → the run's recorded end.
2. **CPU per run at saturation**: ``--saturated`` runs started as fast as the API takes them; the CPU
   time (user + system, from ``/proc`` through psutil) that every process spent from the first start
   to the last end, divided by the number of runs, per process kind: trigger, scheduler, executor,
   signal_router, nats-server, postgres (its backends, plus what exited backends left in the
   postmaster's children times), and the context switches per run of each kind (every thread's, from
   ``/proc``: each is a wake-up or a preemption; below saturation they, not the SQL, set the CPU per run).
   Run it on an otherwise idle machine for the CPU figures.

3. **CPU by arrival rate** (``--rates 20,100,300``): starts paced at each rate in turn for
   ``--rate-seconds``; for each, the cores all processes used from the first start to the last run's
   end, the CPU per run, the context switches per run, and trigger -> step start p50/p99. Below
   saturation a run's CPU is mostly wake-ups (a message, a reply, a statement's result each wake a
   process), so the CPU per run falls as the rate rises and batches fill; at a rate the machine cannot
   absorb, the cores used stop growing and the CPU per run only says how many cores there are. Compare
   two versions' CPU at rates well below that point.

``--bus``: the unloaded runs' three hops that cross the bus are split where their message reached
nats-server: a passive subscriber on the trigger, work and events subjects notes when it got each
run's start, work item and result (its own receive time, on the same clock; the subscriber costs the
server one more copy of each message, so the round trip is not comparable with a run without
``--bus``):

   | hop | from → to |
   |---|---|
   | API → start published | accepted → the start reached the bus (the API's statement and commit,
     its outbox relay) |
   | start published → run started | the bus → the scheduler's batch began the run (delivery, fetch,
     mailbox) |
   | dispatched → work published | the run's batch computed → the work item reached the bus (the
     batch's statement and commit, the relay) |
   | work published → executor started | the bus → the step began (delivery, fetch, the claim) |
   | step ended → result published | the executor's result reached the bus |
   | result published → run ended | the bus → the scheduler's batch ended the run |

``--statements``: Postgres logs every statement, and the saturated and paced phases each end with the
SQL statements they ran per run, by session (``_statements.py``): what a run costs in statements, the
first thing to cut. The CPU figures are then not comparable (logging costs Postgres CPU).

``--batches``: the saturated and paced phases each end with what the workflow's actor did
(``_batches.py``, from the scheduler's ``legato.scheduler.batch.*`` metrics): batches per second,
messages per batch, compute and write time per batch, and how busy the actor was (a start or a result
that arrives while it is in a batch waits for that batch, then its own). The scheduler's metrics are
on then, so its CPU figures are not comparable either.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import nats.aio.client
import psutil

sys.path.insert(0, str(Path(__file__).parent))

from _batches import BatchReading, report, scrape, stack_options
from _servers import (
    bench_servers,
    bench_settings,
    bench_stack,
    cpu_between,
    cpu_per,
    paced,
    percentile,
    sample_cpu,
    switches_between,
)
from _statements import STATEMENT_LOG, mark_sql, statements_between
from _statements import report as report_statements
from legato.bus.topology import Topology
from legato.client import LegatoClient
from legato.config.settings import Settings
from legato.protocol.messages import AttemptFinished, StartRun, decode_event, decode_trigger, decode_work

WORKFLOW = """
id: bench-profile
description: one noop step, for the critical-path profile
run_strategy: {type: parallel, max_concurrency: 1000}
steps:
  - id: only
    type: noop
"""

TERMINAL = "('succeeded', 'failed', 'stopped', 'timed_out', 'skipped')"

HOPS = (
    ("client -> API accepted", "requested_at", "sent_at"),
    ("API -> run started", "run_started_at", "requested_at"),
    ("run started -> work dispatched", "dispatched_at", "run_started_at"),
    ("dispatched -> executor started", "attempt_started_at", "dispatched_at"),
    ("step body (noop)", "attempt_ended_at", "attempt_started_at"),
    ("result -> run ended", "run_ended_at", "attempt_ended_at"),
    ("round trip: sent -> run ended", "run_ended_at", "sent_at"),
    ("trigger -> step start", "attempt_started_at", "requested_at"),
)

# With ``--bus``: the three hops that cross the bus split where each run's messages reached
# nats-server (``BusWatch``); the others as in ``HOPS``.
_HOP = {hop[0]: hop for hop in HOPS}
BUS_HOPS = (
    _HOP["client -> API accepted"],
    ("API -> start published", "start_published", "requested_at"),
    ("start published -> run started", "run_started_at", "start_published"),
    _HOP["run started -> work dispatched"],
    ("dispatched -> work published", "work_published", "dispatched_at"),
    ("work published -> executor started", "attempt_started_at", "work_published"),
    _HOP["step body (noop)"],
    ("step ended -> result published", "result_published", "attempt_ended_at"),
    ("result published -> run ended", "run_ended_at", "result_published"),
    _HOP["round trip: sent -> run ended"],
)

PATH_QUERY = f"""
SELECT i.id,
       extract(epoch FROM i.requested_at) AS requested_at,
       extract(epoch FROM i.started_at) AS run_started_at,
       extract(epoch FROM a.dispatched_at) AS dispatched_at,
       extract(epoch FROM a.started_at) AS attempt_started_at,
       extract(epoch FROM a.ended_at) AS attempt_ended_at,
       extract(epoch FROM i.ended_at) AS run_ended_at
FROM workflow_instance i JOIN step_attempt a ON a.instance_id = i.id
WHERE i.workflow_id = 'bench-profile' AND i.status IN {TERMINAL} AND i.id = ANY($1::text[])
"""


async def wait_ended(conn: asyncpg.Connection, n: int, timeout: float = 600.0, every: float = 0.05) -> None:
    """Until ``n`` runs ended, polling every ``every`` seconds (the polls are Postgres work: the loaded
    phases poll seldom, so that they add little to Postgres's CPU per run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = await conn.fetchval(
            f"SELECT count(*) FROM workflow_instance WHERE workflow_id = 'bench-profile' AND status IN {TERMINAL}"
        )
        if done >= n:
            return
        await asyncio.sleep(every)
    raise TimeoutError(f"runs did not end within {timeout}s")


async def last_end(conn: asyncpg.Connection) -> float:
    """When the last run ended (its recorded end, not the poll that saw it), epoch seconds."""
    value = await conn.fetchval(
        "SELECT extract(epoch FROM max(ended_at)) FROM workflow_instance WHERE workflow_id = 'bench-profile'"
    )
    return float(value)


def hops_of(
    rows: list[asyncpg.Record] | list[dict[str, Any]],
    sent: dict[str, float],
    published: dict[str, dict[str, float]] | None = None,
    table: tuple[tuple[str, str, str], ...] = HOPS,
) -> dict[str, list[float]]:
    """Each hop's durations (ms) over ``rows`` (``PATH_QUERY``'s), with when each run's start was sent
    and, for ``BUS_HOPS``, when its messages were published (``BusWatch.published``)."""
    hops: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        values = {**dict(r), "sent_at": sent[r["id"]], **(published or {}).get(r["id"], {})}
        for label, end, start in table:
            if values.get(end) is not None and values.get(start) is not None:
                hops[label].append((float(values[end]) - float(values[start])) * 1000)
    return hops


def dump_runs(path: str | None, phase: str, rows: list[Any], sent: dict[str, float]) -> None:
    """Append each run's recorded timestamps (epoch seconds) to ``path`` as JSON lines, with its phase
    and when its start was sent: to look at the slowest runs of a phase one by one (what they share,
    whether they cluster in time)."""
    if not path:
        return
    with open(path, "a", encoding="utf-8") as out:
        for r in rows:
            fields = {k: (float(v) if v is not None and k != "id" else v) for k, v in dict(r).items()}
            out.write(json.dumps({"phase": phase, "sent_at": sent[r["id"]], **fields}) + "\n")


def report_hops(
    n: int,
    hops: dict[str, list[float]],
    what: str = "unloaded one-noop-step runs, one at a time",
    table: tuple[tuple[str, str, str], ...] = HOPS,
) -> None:
    print(f"critical path of {n} {what} (ms):")
    print(f"  {'hop':36} {'p50':>8} {'p99':>8}")
    for label, _, _ in table:
        print(f"  {label:36} {percentile(hops[label], 50):8.2f} {percentile(hops[label], 99):8.2f}")
    print("  (the round trip is measured to the run's recorded end; the waiting client polls Postgres)")


class BusWatch:
    """A passive subscriber on the trigger, work and events subjects: when each run's start, work item
    and result reached nats-server (this process's receive time), by run id. The first copy counts (a
    message published again keeps its first time)."""

    KINDS = (("trigger", "start_published"), ("work", "work_published"), ("event", "result_published"))

    def __init__(self, nc: nats.aio.client.Client, topology: Topology) -> None:
        self.nc = nc
        self.topology = topology
        self.published: dict[str, dict[str, float]] = defaultdict(dict)
        self._subs: list[Any] = []

    async def start(self) -> None:
        for kind, field in self.KINDS:

            async def noted(msg: Any, kind: str = kind, field: str = field) -> None:
                self.note(kind, field, msg.data, time.time())

            self._subs.append(await self.nc.subscribe(f"{self.topology.subject_prefix(kind)}>", cb=noted))
        # nats-py's first PING can overtake the queued SUBs (legato.bus.publisher.caught_up, which an
        # older checkout measured with --code lacks); the flusher writes them meanwhile, and the second
        # PING follows them.
        await self.nc.flush()
        await self.nc.flush()

    def note(self, kind: str, field: str, data: bytes, at: float) -> None:
        """Note ``at`` for the run ``data`` (a message of ``kind``) is about, if it is one of the hops'."""
        try:
            if kind == "trigger":
                message: Any = decode_trigger(data)
                if not isinstance(message, StartRun):
                    return
            elif kind == "work":
                message = decode_work(data)
            else:
                message = decode_event(data)
                if not isinstance(message, AttemptFinished):
                    return
        except msgspec.MsgspecError:
            return  # not a message this bench follows
        self.published[message.instance_id].setdefault(field, at)

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()


def print_switches(switches: dict[str, float], runs: int) -> None:
    """Context switches per run by process kind: the wake-ups a run costs (every message, reply or
    statement result that wakes a process), which is what CPU per run tracks below saturation."""
    print(
        "  context switches per run: "
        + ", ".join(
            f"{kind} {switches[kind] / runs:.1f}" for kind in sorted(switches, key=lambda k: -switches[k])
        )
    )


async def start_paced(client: LegatoClient, rate: float, count: int, prefix: str) -> dict[str, float]:
    """Start ``count`` runs at ``rate`` per second (an open-loop arrival rate: start i goes out at
    i/rate, whatever the replies take); returns each run's id -> when its start was sent."""
    sent: dict[str, float] = {}

    async def one(i: int) -> None:
        t_sent = time.time()
        reply = await client.start("bench-profile", request_id=f"{prefix}{i}")
        sent[str(reply.instance_id)] = t_sent

    await paced(rate, count, one)
    return sent


async def statements_of(conn: asyncpg.Connection, pg_log: Path | None, phase: str, runs: int) -> None:
    """With ``--statements``: close the phase (its end marker) and print the statements it ran."""
    if pg_log is None:
        return
    await conn.execute(mark_sql(f"{phase}-end"))
    await asyncio.sleep(0.2)  # the log line is written after the statement's reply
    lines = pg_log.read_text(errors="replace").splitlines()
    report_statements(statements_between(lines, f"{phase}-start", f"{phase}-end"), runs)


@dataclass
class Phase:
    """A measured phase's readings at its start and, once ``end`` is called, at its end: every process's
    CPU (``sample_cpu``), this process's, and with a metrics port the scheduler's actor batches."""

    port: int
    cpu: Any
    client_cpu: float
    t0: float
    batches: BatchReading | None
    cpu_after: Any = None
    batches_after: BatchReading | None = None

    def end(self, stack: Any) -> None:
        self.cpu_after = sample_cpu(stack)
        self.client_cpu = time.process_time() - self.client_cpu
        self.batches_after = scrape(self.port) if self.port else None

    def batch_lines(self, seconds: float) -> list[str]:
        """The actor batches' report over the phase (none without a metrics port)."""
        if self.batches is None or self.batches_after is None:
            return []
        return report(self.batches, self.batches_after, seconds)


async def begin_phase(
    stack: Any, conn: asyncpg.Connection, pg_log: Path | None, name: str, port: int
) -> Phase:
    """Mark the phase's start in the statement log (``--statements``) and take its first readings."""
    if pg_log is not None:
        await conn.execute(mark_sql(f"{name}-start"))
    batches = scrape(port) if port else None
    return Phase(port, sample_cpu(stack), time.process_time(), time.time(), batches)


async def saturated(
    stack: Any, client: Any, conn: asyncpg.Connection, n: int, done: int, pg_log: Path | None, port: int = 0
) -> float:
    """``n`` runs started as fast as the API takes them (``done`` runs ended once they all have): prints
    the CPU per run of every process kind, with ``pg_log`` the statements they ran, and with ``port``
    (the scheduler's metrics) the actors' batches; returns runs/s."""
    phase = await begin_phase(stack, conn, pg_log, "saturated", port)
    sem = asyncio.Semaphore(256)

    async def one(i: int) -> None:
        async with sem:
            await client.start("bench-profile", request_id=f"sat{i}")

    await asyncio.gather(*(one(i) for i in range(n)))
    await wait_ended(conn, done, every=0.25)
    elapsed = await last_end(conn) - phase.t0  # to the last run's recorded end, not to the poll that saw it
    phase.end(stack)
    cpu, switches = cpu_between(phase.cpu, phase.cpu_after), switches_between(phase.cpu, phase.cpu_after)
    total = sum(cpu.values())
    print(
        f"CPU per run at saturation: {n} runs in {elapsed:.1f} s ({n / elapsed:.0f} runs/s), "
        f"all processes {total / n * 1000:.2f} ms CPU per run"
    )
    for kind in sorted(cpu, key=lambda k: -cpu[k]):
        print(
            f"  {kind:14} {cpu[kind] / n * 1000:7.3f} ms/run  ({cpu[kind] / elapsed * 100:5.1f}% of a core)"
        )
    print(
        f"  {'(bench client)':14} {phase.client_cpu / n * 1000:7.3f} ms/run  "
        "(this process: the starts, and polling Postgres; not in the total)"
    )
    print_switches(switches, n)
    for line in phase.batch_lines(elapsed):
        print(line)
    await statements_of(conn, pg_log, "saturated", n)
    return n / elapsed


async def profile(
    args: argparse.Namespace, settings: Settings, log_dir: Path, pg_log: Path | None = None
) -> None:
    """``pg_log``: the Postgres log to read the statements of each phase from (``--statements``)."""
    port, options = stack_options(args.batches)
    async with bench_stack(settings, log_dir, timeout=30, executors=1, concurrency=64, **options) as (
        stack,
        client,
        conn,
    ):
        await client.push(WORKFLOW)
        await asyncio.sleep(1.0)  # let the scheduler take its partitions
        # Warm up every path (connections, prepared statements, imports) before measuring.
        for i in range(20):
            await client.start("bench-profile", request_id=f"warm{i}")
        await wait_ended(conn, 20)

        # 1. Unloaded round trips, one at a time.
        watch = BusWatch(client.nc, Topology(namespace=settings.namespace)) if args.bus else None
        if watch is not None:
            await watch.start()
        sent: dict[str, float] = {}
        done = 20
        if pg_log is not None:
            await conn.execute(mark_sql("sequential-start"))
        for i in range(args.sequential):
            rid = f"seq{i}"
            t_sent = time.time()
            reply = await client.start("bench-profile", request_id=rid)
            sent[str(reply.instance_id)] = t_sent
            done += 1
            await wait_ended(conn, done)
        rows = await conn.fetch(PATH_QUERY, list(sent)) if sent else []
        dump_runs(args.dump, "sequential", rows, sent)
        if rows and watch is not None:
            await watch.stop()
            report_hops(len(rows), hops_of(rows, sent, watch.published, BUS_HOPS), table=BUS_HOPS)
        elif rows:
            report_hops(len(rows), hops_of(rows, sent))
        await statements_of(conn, pg_log, "sequential", args.sequential)

        # 2. CPU per run at saturation.
        n = args.saturated
        done += n
        saturated_rate = await saturated(stack, client, conn, n, done, pg_log, port) if n > 0 else 0.0

        # 3. The critical path under load: starts paced at half the saturated rate (an open-loop
        # arrival rate), each run's hops from the recorded timestamps.
        if args.paced_seconds > 0:
            if args.analyze:
                # What autovacuum does in a live system once the tables have grown: the services'
                # sessions plan their statements again with the new figures.
                await conn.execute("ANALYZE")
            rate = args.rate or max(10.0, round(saturated_rate / 2))
            count = int(rate * args.paced_seconds)
            phase = await begin_phase(stack, conn, pg_log, "paced", port)
            sent = await start_paced(client, rate, count, "paced")
            done += count
            await wait_ended(conn, done, every=0.25)
            phase.end(stack)
            cpu, switches = (
                cpu_between(phase.cpu, phase.cpu_after),
                switches_between(phase.cpu, phase.cpu_after),
            )
            rows = await conn.fetch(PATH_QUERY, list(sent))
            dump_runs(args.dump, "paced", rows, sent)
            report_hops(len(rows), hops_of(rows, sent), f"runs started at {rate:.0f}/s (half of saturation)")
            print(
                f"  at this rate: {cpu_per(cpu, count)}; "
                f"(bench client) {phase.client_cpu / count * 1000:.3f}, not in the total"
            )
            print_switches(switches, count)
            if phase.batches is not None:  # to the last run's recorded end, as the saturated phase
                for line in phase.batch_lines(max(await last_end(conn) - phase.t0, 1e-3)):
                    print(line)
            await statements_of(conn, pg_log, "paced", count)

        # 4. CPU by arrival rate.
        if args.rates:
            print(
                f"CPU by arrival rate ({args.rate_seconds:g} s of starts at each rate; cores: all processes "
                f"from the first start to the last end, of {psutil.cpu_count()}):"
            )
            print(
                f"  {'starts/s':>8} {'cores':>6} {'ms/run':>7} {'step start p50':>14} {'p99':>7}  "
                "by process (ms/run); context switches per run"
            )
            for rate in args.rates:
                count = max(1, int(rate * args.rate_seconds))
                before = sample_cpu(stack)
                t0 = time.time()
                sent = await start_paced(client, rate, count, f"rate{rate:g}-")
                done += count
                await wait_ended(conn, done, every=0.25)
                spent = max(await last_end(conn) - t0, 1e-3)
                after = sample_cpu(stack)
                cpu, switches = cpu_between(before, after), switches_between(before, after)
                starts = hops_of(await conn.fetch(PATH_QUERY, list(sent)), sent)["trigger -> step start"]
                kinds = sorted(cpu, key=lambda k: -cpu[k])
                print(
                    f"  {rate:8g} {sum(cpu.values()) / spent:6.2f} {sum(cpu.values()) / count * 1000:7.2f} "
                    f"{percentile(starts, 50):14.1f} {percentile(starts, 99):7.1f}  "
                    + ", ".join(f"{k} {cpu[k] / count * 1000:.2f}" for k in kinds if cpu[k] / count >= 5e-5)
                    + "; "
                    + ", ".join(f"{k} {switches[k] / count:.1f}" for k in kinds if switches.get(k))
                )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sequential", type=int, default=200, help="unloaded runs, one at a time")
    parser.add_argument(
        "--saturated", type=int, default=3000, help="runs for the CPU-per-run measure (0: skip it)"
    )
    parser.add_argument(
        "--paced-seconds",
        type=float,
        default=10.0,
        help="then start runs at --rate for this long and print their critical path (0: skip)",
    )
    parser.add_argument("--rate", type=float, default=0.0, help="paced starts/s; 0 = half the saturated rate")
    parser.add_argument(
        "--analyze",
        action="store_true",
        help="ANALYZE the database before the paced phase, as autovacuum would once the tables grew",
    )
    parser.add_argument(
        "--rates",
        type=lambda text: [float(r) for r in text.split(",") if r.strip()],
        default=[],
        help="then, for each of these comma-separated starts/s, the cores used and CPU per run (e.g. 20,100,300)",
    )
    parser.add_argument("--rate-seconds", type=float, default=5.0, help="how long each --rates rate lasts")
    parser.add_argument(
        "--auth",
        choices=("off", "on", "both"),
        default="off",
        help="on: nkey auth with per-role permissions, signed requests and work items; both: off then on",
    )
    parser.add_argument(
        "--bus",
        action="store_true",
        help="split the unloaded runs' hops where their messages reached nats-server (a passive subscriber)",
    )
    parser.add_argument(
        "--statements",
        action="store_true",
        help="log every SQL statement and print each phase's statements per run (CPU figures then skewed)",
    )
    parser.add_argument(
        "--batches",
        action="store_true",
        help="print the workflow actor's batches in the saturated and paced phases (bench/_batches.py; "
        "the scheduler's metrics on, so its CPU figures are skewed)",
    )
    parser.add_argument(
        "--dump",
        metavar="FILE",
        help="append every unloaded and paced run's recorded timestamps to FILE (JSON lines)",
    )
    args = parser.parse_args()
    if args.saturated <= 0 and args.paced_seconds > 0 and not args.rate:
        parser.error("--saturated 0 skips the saturated phase, which sets the paced rate: give --rate too")
    for auth in {"off": [False], "on": [True], "both": [False, True]}[args.auth]:
        print(f"\n== auth {'on' if auth else 'off'} ==")
        pg_settings = STATEMENT_LOG if args.statements else None
        with bench_servers("legato_profile", auth=auth, pg_settings=pg_settings) as servers:
            settings = bench_settings(servers)
            pg_log = servers.pg_log if args.statements else None
            if args.statements and pg_log is None:
                print("--statements needs the embedded Postgres (LEGATO_BENCH_DATABASE_URL is set): skipped")
            asyncio.run(profile(args, settings, servers.tmp / "logs", pg_log))


if __name__ == "__main__":
    main()
