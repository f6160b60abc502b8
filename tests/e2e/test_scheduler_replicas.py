"""Scheduler replicas as real processes against a real PostgreSQL and NATS: one live process per
replica id, one partition count per install, and rebalancing that converges without flip-flopping."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import psutil
import pytest

from legato.bus.topology import partition_of
from legato.config.settings import Settings
from legato.devstack.processes import ServiceProcess, service_env
from legato.scheduler.leases import SESSION_PREFIX
from tests.e2e.test_spine import _ledger_lines
from tests.support.stack import TERMINAL, running_stack, wait_for

TTL = 3.0
# Runs the loader below may have unfinished at once (two shell steps each).
LOAD_BACKLOG = 100


def scheduler(
    settings: Settings,
    tmp_path: Path,
    name: str,
    replica: str,
    env: dict[str, str] | None = None,
    ttl: float = TTL,
) -> ServiceProcess:
    return ServiceProcess(
        name,
        "legato.scheduler",
        ["--replica-id", replica, "--lease-ttl", str(ttl)],
        service_env(settings, tmp_path / "state", env),
        tmp_path,
    )


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(settings.database_url)
    yield conn
    await conn.close()


async def owners(db: asyncpg.Connection) -> dict[int, tuple[str, int]]:
    """Partition -> (owner, token) for every lease that is live right now."""
    rows = await db.fetch(
        "SELECT partition, owner, token FROM partition_lease WHERE expires_at > clock_timestamp()"
    )
    return {r["partition"]: (r["owner"], r["token"]) for r in rows}


async def locked_leases(db: asyncpg.Connection) -> int:
    """How many lease rows some transaction holds a lock on right now (those FOR UPDATE would skip)."""
    async with db.transaction():
        free = await db.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM partition_lease FOR UPDATE SKIP LOCKED) t"
        )
        total = await db.fetchval("SELECT count(*) FROM partition_lease")
    return int(total) - int(free)


async def database_state(db: asyncpg.Connection) -> str:
    """What every session of the test database is doing and who owns which partition (for a failure)."""
    sessions = await db.fetch(
        "SELECT pid, application_name, state, wait_event_type, wait_event, "
        "round(extract(epoch FROM clock_timestamp() - xact_start)::numeric, 1) AS xact_age, "
        "pg_blocking_pids(pid) AS blocked_by, left(query, 160) AS query "
        "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    leases = await db.fetch(
        "SELECT partition, owner, token, expires_at > clock_timestamp() AS live FROM partition_lease "
        "ORDER BY partition"
    )
    return "\n".join(["sessions:", *map(str, map(dict, sessions)), "leases:", *map(str, map(dict, leases))])


async def until(cond: object, timeout: float, what: str, *procs: ServiceProcess) -> float:
    start = time.monotonic()
    while not await cond():  # type: ignore[operator]
        if time.monotonic() - start > timeout:
            raise AssertionError(
                f"{what} not reached in {timeout}s\n" + "\n".join(p.log_tail() for p in procs)
            )
        await asyncio.sleep(0.1)
    return time.monotonic() - start


async def test_a_second_process_with_the_same_replica_id_refuses_to_start(
    settings: Settings, tmp_path: Path, db: asyncpg.Connection
) -> None:
    first = scheduler(settings, tmp_path, "first", "twin")
    second = scheduler(settings, tmp_path, "second", "twin")
    first.start()
    try:

        async def all_owned() -> bool:
            o = await owners(db)
            return len(o) == settings.partitions and {v[0] for v in o.values()} == {"twin"}

        await until(all_owned, 60, "first owns every partition", first)
        before = await owners(db)
        second.start()
        assert second.proc is not None
        rc = await asyncio.to_thread(second.proc.wait, 60)
        assert rc == 1, second.log_tail()
        assert "replica id 'twin' is held by another live scheduler process" in second.log_tail()
        assert first.alive
        # The first process kept every partition under the same fencing token: nothing was stolen.
        await asyncio.sleep(TTL)
        assert await owners(db) == before
    finally:
        second.terminate()
        first.terminate()


async def test_a_replica_id_is_free_again_once_its_process_is_killed(
    settings: Settings, tmp_path: Path, db: asyncpg.Connection
) -> None:
    first = scheduler(settings, tmp_path, "first", "phoenix")
    again = scheduler(settings, tmp_path, "again", "phoenix")
    first.start()
    try:

        async def owned_by(incarnations: int) -> bool:
            o = await owners(db)
            return len(o) == settings.partitions and all(t >= incarnations for _, t in o.values())

        await until(lambda: owned_by(1), 60, "first owns every partition", first)
        first.kill9()
        again.start()
        # The restarted replica takes its name and its partitions back at once (no lease expiry wait).
        await until(lambda: owned_by(2), 30, "restart owns every partition", again)
        assert again.alive
    finally:
        again.terminate()
        first.terminate()


async def test_a_process_with_another_partition_count_refuses_to_start(
    settings: Settings, tmp_path: Path, db: asyncpg.Connection
) -> None:
    first = scheduler(settings, tmp_path, "first", "a")
    other = scheduler(settings, tmp_path, "other", "b", {"LEGATO_PARTITIONS": str(settings.partitions * 2)})
    first.start()
    try:

        async def all_owned() -> bool:
            return len(await owners(db)) == settings.partitions

        await until(all_owned, 60, "first owns every partition", first)
        other.start()
        assert other.proc is not None
        rc = await asyncio.to_thread(other.proc.wait, 60)
        assert rc == 1, other.log_tail()
        assert (
            f"LEGATO_PARTITIONS is {settings.partitions * 2} but this install uses {settings.partitions} "
            "partitions" in other.log_tail()
        )
        assert (
            await db.fetchval(
                "SELECT count(*) FROM partition_lease WHERE partition >= $1", settings.partitions
            )
            == 0
        )
        assert await db.fetchval("SELECT count(*) FROM scheduler_replica WHERE name = 'b'") == 0
    finally:
        other.terminate()
        first.terminate()


@pytest.mark.slow
async def test_32_partitions_rebalance_to_a_joining_replica_without_flip_flopping(
    settings: Settings, tmp_path: Path, db: asyncpg.Connection
) -> None:
    parts = 32
    env = {"LEGATO_PARTITIONS": str(parts)}
    # A longer lease than the other tests: this one checks that ownership settles, and on a loaded CI
    # machine a stall of both processes (or of Postgres) past a 3 s lease once let every lease lapse
    # at once, which then reshuffles partitions legitimately (that is availability, not flip-flopping).
    ttl = 6.0
    a = scheduler(settings, tmp_path, "a", "a", env, ttl)
    b = scheduler(settings, tmp_path, "b", "b", env, ttl)
    a.start()
    try:

        async def a_owns_all() -> bool:
            o = await owners(db)
            return len(o) == parts and {v[0] for v in o.values()} == {"a"}

        await until(a_owns_all, 90, "a owns all 32 partitions", a)
        b.start()

        async def balanced() -> bool:
            o = await owners(db)
            return len(o) == parts and sorted(v[0] for v in o.values()) == ["a"] * 16 + ["b"] * 16

        took = await until(balanced, 60, "16 + 16 partitions", a, b)
        print(f"rebalance 32 partitions to a joining replica: {took:.1f}s")
        settled = await owners(db)
        # Stable: for three lease times every partition stays owned, by the same replica, same token.
        end = time.monotonic() + 3 * ttl
        while time.monotonic() < end:
            assert await owners(db) == settled, "ownership changed after convergence"
            await asyncio.sleep(0.2)
        assert a.alive and b.alive
    finally:
        b.terminate()
        a.terminate()


# Step a's concurrency tag (one per workflow, with no limit) makes each of the workflow's batches a
# transaction (tags are shared, so a batch locks them from its start): the pause test below needs a
# scheduler to stop inside one, which a one-statement batch never leaves open.
LEDGER = """
id: {id}
run_strategy: {{type: parallel, max_concurrency: 200}}
steps:
  - id: a
    type: shell
    command: 'echo "$LEGATO_INSTANCE_ID $LEGATO_STEP_ID $LEGATO_ATTEMPT" >> {ledger}'
    retry: {{platform: 5, backoff: {{type: fixed, initial: 0.2s}}}}
    concurrency_tags: ["{id}"]
  - id: b
    type: shell
    depends_on: [a]
    command: 'echo "$LEGATO_INSTANCE_ID $LEGATO_STEP_ID $LEGATO_ATTEMPT" >> {ledger}'
    retry: {{platform: 5, backoff: {{type: fixed, initial: 0.2s}}}}
"""

# Scheduler sessions that wait for a lock the given backend holds.
BLOCKED_SCHEDULERS = f"""
SELECT pid, application_name FROM pg_stat_activity
WHERE datname = current_database() AND $1 = ANY(pg_blocking_pids(pid))
  AND application_name LIKE '{SESSION_PREFIX}%'
"""


async def pause_inside_a_transaction(
    settings: Settings, db: asyncpg.Connection, stack: dict[str, ServiceProcess], tries: int = 20
) -> tuple[ServiceProcess, bool]:
    """SIGSTOP a scheduler process while it holds a transaction open, without a race: lock a running
    run's row, wait until a scheduler's statement waits for that lock, stop the process, then let the
    statement finish. Its session then sits idle in its transaction, which the process cannot commit.

    Best when the statement was the batch's flush, whose final lease check leaves the lease rows locked
    (``FOR KEY SHARE``) until the commit; after ``tries`` without that, any statement of the batch
    (its workflow row and its runs stay locked). Returns the process and whether it holds lease rows."""
    holder = await asyncpg.connect(settings.database_url)
    try:
        holder_pid = holder.get_server_pid()
        for attempt in range(2 * tries):
            tx = holder.transaction()
            await tx.start()
            blocked = None
            try:
                locked = await holder.fetchval(
                    "SELECT id FROM workflow_instance WHERE status = 'running' "
                    "ORDER BY seq DESC LIMIT 1 FOR UPDATE SKIP LOCKED"
                )
                deadline = time.monotonic() + 5
                while locked is not None and blocked is None and time.monotonic() < deadline:
                    blocked = await db.fetchrow(BLOCKED_SCHEDULERS, holder_pid)
                    if blocked is None:
                        await asyncio.sleep(0.005)
                if blocked is None:
                    await asyncio.sleep(0.1)
                    continue
                incarnation = blocked["application_name"].removeprefix(SESSION_PREFIX)
                replica = await db.fetchval(
                    "SELECT name FROM scheduler_replica WHERE incarnation = $1", incarnation
                )
                index = int(replica.removeprefix("replica-"))
                victim = stack["scheduler" if index == 0 else f"scheduler{index}"]
                assert victim.pid is not None
                os.kill(victim.pid, signal.SIGSTOP)
                while psutil.Process(victim.pid).status() != psutil.STATUS_STOPPED:
                    await asyncio.sleep(0.001)
            finally:
                await tx.rollback()  # the stopped process's statement now completes
            state = None
            for _ in range(200):
                state = await db.fetchval("SELECT state FROM pg_stat_activity WHERE pid = $1", blocked["pid"])
                if state != "active":
                    break
                await asyncio.sleep(0.005)
            holds_leases = state == "idle in transaction" and await locked_leases(db) > 0
            if holds_leases or (state == "idle in transaction" and attempt >= tries):
                return victim, holds_leases
            os.kill(victim.pid, signal.SIGCONT)
            await asyncio.sleep(0.2)
        raise AssertionError(f"no scheduler caught inside a transaction\n{await database_state(db)}")
    finally:
        await holder.close()


@pytest.mark.slow
async def test_a_replica_paused_inside_a_transaction_never_stalls_the_other(
    settings: Settings, tmp_path: Path, db: asyncpg.Connection
) -> None:
    """SIGSTOP one of two schedulers while it holds a transaction on its lease rows: the other takes
    over its partitions and every new run completes while it stays stopped; after SIGCONT nothing is
    stuck, nothing ran twice, nothing was dead-lettered."""
    ledger = tmp_path / "ledger.txt"
    # One workflow on every partition, so every partition must be served by someone.
    names = (f"led{i}" for i in range(10_000))
    by_partition: dict[int, str] = {}
    while len(by_partition) < settings.partitions:
        name = next(names)
        by_partition.setdefault(partition_of(name, settings.partitions), name)
    flows = sorted(by_partition.values())
    async with running_stack(settings, tmp_path, schedulers=2, lease_ttl=TTL, concurrency=8) as (
        stack,
        client,
    ):
        for w in flows:
            await client.push(LEDGER.format(id=w, ledger=ledger))

        async def both_own() -> bool:
            o = await owners(db)
            return len(o) == settings.partitions and len({v[0] for v in o.values()}) == 2

        await until(both_own, 60, "both replicas own partitions", stack["scheduler"], stack["scheduler1"])
        started: list[str] = []
        n = 0

        stop_loading = asyncio.Event()

        async def load() -> None:
            nonlocal n
            while not stop_loading.is_set():
                if n >= LOAD_BACKLOG:
                    # Bounded backlog: the executor runs ~25 shell steps/s, so an unbounded loader left
                    # thousands of steps queued ahead of the fresh runs below when the victim was caught
                    # late, and they missed their deadline behind the queue (FIFO), not a stall.
                    oldest = started[n - LOAD_BACKLOG]
                    while (await client.get(oldest))["status"] not in TERMINAL and not stop_loading.is_set():
                        await asyncio.sleep(0.1)
                    if stop_loading.is_set():
                        break
                r = await client.start(flows[n % len(flows)], request_id=f"load{n}")
                started.append(r.instance_id)
                n += 1
                await asyncio.sleep(0.01)

        loader = asyncio.create_task(load())
        try:
            while not await db.fetchval("SELECT count(*) FROM workflow_instance WHERE status = 'running'"):
                await asyncio.sleep(0.05)
            victim, holds_leases = await pause_inside_a_transaction(settings, db, stack)
        finally:
            stop_loading.set()  # let the start in flight finish: every accepted run is checked below
            await loader
        print(
            f"paused {victim.name} inside a transaction, {'holding' if holds_leases else 'without'} lease rows"
        )
        assert victim.pid is not None
        try:
            paused_at = time.monotonic()
            # While it stays stopped (for several lease times), new runs on every partition complete.
            fresh: list[str] = []
            for wave in range(3):
                ids_now = [(await client.start(w, request_id=f"fresh{wave}-{w}")).instance_id for w in flows]
                for i in ids_now:
                    try:
                        info = await wait_for(client, i, timeout=45)
                    except TimeoutError as exc:
                        raise AssertionError(f"{exc}\n{await database_state(db)}") from None
                    assert info["status"] == "succeeded", info
                if wave == 0:
                    took = time.monotonic() - paused_at
                    print(f"runs progressing on every partition {took:.1f}s after SIGSTOP of a replica")
                fresh += ids_now
                await asyncio.sleep(TTL)
            assert victim.alive
        finally:
            os.kill(victim.pid, signal.SIGCONT)
        ids = sorted(set(started) | set(fresh))
        infos = [await wait_for(client, i, timeout=120) for i in ids]
    assert all(i["status"] == "succeeded" for i in infos), [(i["instance_id"], i["status"]) for i in infos]
    lines = _ledger_lines(ledger)
    for info in infos:
        for step in info["steps"]:
            done = [a for a in step["attempts"] if a["status"] == "succeeded"]
            assert len(done) == 1, step
            ran = [x for x in lines if x[0] == info["instance_id"] and x[1] == step["step_id"]]
            lost = {a["attempt"] for a in step["attempts"] if a["status"] == "lost"}
            assert all(x[2] == done[0]["attempt"] or x[2] in lost for x in ran), (step, ran)
    assert await db.fetchval("SELECT count(*) FROM workflow_instance") == len(ids)
    assert await db.fetchval("SELECT count(*) FROM dead_letter") == 0
