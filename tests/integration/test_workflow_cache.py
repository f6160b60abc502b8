"""The API's workflow cache makes one read at a time per key, against a real Postgres.

Starts that find a workflow's activation expired (once a second), or a version not compiled yet, wait
for the one read the first of them began: before, each made its own, and a burst of them went through
the API's two pooled connections ahead of the start batches.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from legato.bus.topology import Topology
from legato.core import parse_definition
from legato.protocol.api import ApiError
from legato.store import create_pool
from legato.trigger import workflow_cache
from legato.trigger.registry import push_workflow
from legato.trigger.workflow_cache import WorkflowCache

TOPOLOGY = Topology(namespace="t", partitions=4)
ONE = "id: cached\nsteps:\n  - {id: a, type: noop}\n"
TWO = "id: cached\nsteps:\n  - {id: a, type: noop}\n  - {id: b, type: noop, depends_on: [a]}\n"


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(database_url, max_size=2)  # as the API's
    async with p.acquire() as conn, conn.transaction():
        for text, activate in ((ONE, True), (TWO, False)):  # version 1 active, version 2 stored
            await push_workflow(
                conn, TOPOLOGY, parse_definition(text), source_text=text, actor="t", activate=activate
            )
    yield p
    await p.close()


async def test_a_burst_of_starts_makes_one_read_of_an_expired_activation(pool: asyncpg.Pool) -> None:
    cache = WorkflowCache(pool)
    got = await asyncio.gather(*(cache.activation("cached") for _ in range(200)))
    assert set(got) == {(True, 1)} and cache.reads == 1
    await asyncio.gather(*(cache.activation("cached") for _ in range(50)))
    assert cache.reads == 1  # fresh for a second

    cache._activation["cached"] = (0.0, True, 1)  # a second later: expired
    await asyncio.gather(*(cache.activation("cached") for _ in range(200)))
    assert cache.reads == 2


async def test_a_burst_of_starts_compiles_a_version_once(pool: asyncpg.Pool) -> None:
    cache = WorkflowCache(pool)
    compiled = await asyncio.gather(*(cache.compiled_version("cached", 2) for _ in range(100)))
    assert cache.reads == 1 and all(c is compiled[0] for c in compiled)
    assert compiled[0].topo_order == ["a", "b"]


async def test_a_change_during_a_read_is_not_hidden_by_it(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``forget`` while a read is under way: that read began before the change, so what it found is not
    kept, and the next caller reads the changed row."""
    cache = WorkflowCache(pool)
    real = workflow_cache.registry.get_workflow_row
    read_done, go_on = asyncio.Event(), asyncio.Event()

    async def held(conn: asyncpg.Connection, workflow_id: str) -> asyncpg.Record:
        row = await real(conn, workflow_id)
        read_done.set()
        await go_on.wait()
        return row

    monkeypatch.setattr(workflow_cache.registry, "get_workflow_row", held)
    reading = asyncio.ensure_future(cache.activation("cached"))
    await read_done.wait()  # it read version 1 as active
    async with pool.acquire() as conn:
        await conn.execute("UPDATE workflow SET active_version = 2 WHERE id = 'cached'")
    cache.forget("cached")  # what the API does after such a change
    go_on.set()
    assert await reading == (True, 1)
    monkeypatch.setattr(workflow_cache.registry, "get_workflow_row", real)
    assert await cache.activation("cached") == (True, 2)
    assert cache.reads == 2


async def test_a_failed_read_reaches_every_caller_and_the_next_call_reads_again(
    pool: asyncpg.Pool,
) -> None:
    cache = WorkflowCache(pool)
    results = await asyncio.gather(*(cache.activation("nowhere") for _ in range(20)), return_exceptions=True)
    assert all(isinstance(r, ApiError) and r.code == "not_found" for r in results)
    assert cache.reads == 1 and not cache._reading
    with pytest.raises(ApiError):
        await cache.activation("nowhere")
    assert cache.reads == 2


async def test_a_cancelled_caller_leaves_the_read_to_the_others(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = WorkflowCache(pool)
    gate = asyncio.Event()
    real = workflow_cache.registry.get_workflow_row

    async def slow(conn: asyncpg.Connection, workflow_id: str) -> asyncpg.Record:
        await gate.wait()
        return await real(conn, workflow_id)

    monkeypatch.setattr(workflow_cache.registry, "get_workflow_row", slow)
    first = asyncio.ensure_future(cache.activation("cached"))
    second = asyncio.ensure_future(cache.activation("cached"))
    await asyncio.sleep(0.05)
    first.cancel()
    gate.set()
    assert await second == (True, 1)
    assert first.cancelled() and cache.reads == 1
