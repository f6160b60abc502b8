"""Scheduler replicas as real processes against a real PostgreSQL and NATS: one live process per
replica id, one partition count per install, and rebalancing that converges without flip-flopping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from legato.devstack.processes import ServiceProcess, service_env
from legato.runtime.settings import Settings

TTL = 3.0


def scheduler(
    settings: Settings, tmp_path: Path, name: str, replica: str, env: dict[str, str] | None = None
) -> ServiceProcess:
    return ServiceProcess(
        name,
        "legato.scheduler",
        ["--replica-id", replica, "--lease-ttl", str(TTL)],
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
    a = scheduler(settings, tmp_path, "a", "a", env)
    b = scheduler(settings, tmp_path, "b", "b", env)
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
        end = time.monotonic() + 3 * TTL
        while time.monotonic() < end:
            assert await owners(db) == settled, "ownership changed after convergence"
            await asyncio.sleep(0.2)
        assert a.alive and b.alive
    finally:
        b.terminate()
        a.terminate()
