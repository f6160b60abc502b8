"""The API commits batches of starts on sessions that plan the start statement once, against real servers.

With Postgres's default ``plan_cache_mode`` the start statement was planned again for every batch (a
plan for the ids at hand always looks cheaper than one for any ids, ``unnest`` counts them): 0.3 ms of
planning per batch, more than running it. The trigger's start pool plans it once; the rest of the API
stays on sessions that plan per value (optional filters need it)."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import asyncpg

from legato.bus.publisher import OutgoingMessage
from legato.client import LegatoClient
from legato.config.settings import Settings
from legato.runtime.host import ServiceHost
from legato.store.outbox import outbox_args
from legato.trigger.api import ApiService
from legato.trigger.service import _start_pool
from legato.trigger.start_api import _START_BATCH
from tests.support.stack import wait_api


async def plans_of(conn: asyncpg.Connection, sql: str) -> tuple[int, int]:
    """How many executions of ``sql`` in this session ran its one generic plan, and how many were planned
    for their values (0, 0 if never prepared)."""
    row = await conn.fetchrow(
        "SELECT coalesce(sum(generic_plans), 0)::int AS g, coalesce(sum(custom_plans), 0)::int AS c "
        "FROM pg_prepared_statements WHERE statement = $1",
        sql,
    )
    return row["g"], row["c"]


async def test_the_default_session_plans_the_start_statement_for_every_batch(database_url: str) -> None:
    """What the start pool is for: on a default session each batch of starts is planned anew."""
    conn = await asyncpg.connect(database_url)
    try:
        for i in range(8):
            msgs = [OutgoingMessage(f"t.trigger.{i}", b"{}", msg_id=f"start:{i}")]
            await conn.fetch(_START_BATCH, *outbox_args(msgs), [f"run{i}"], ["wf"], [f"d{i}"])
        assert await plans_of(conn, _START_BATCH) == (0, 8)
    finally:
        await conn.close()


async def test_starts_are_committed_on_sessions_that_plan_once(settings: Settings) -> None:
    async with AsyncExitStack() as stack:
        host = await stack.enter_async_context(ServiceHost("trigger", settings, configure_process=False))
        start_pool = await stack.enter_async_context(_start_pool(settings))
        host.add(
            ApiService(
                host.nc,
                host.pool,
                host.topology,
                wake_relay=host.wake_relay,
                relay_committed=host.relay_committed,
                start_pool=start_pool,
            )
        )
        task = asyncio.create_task(host.run(handle_signals=False))
        client = await LegatoClient.connect(settings.nats_url, namespace=settings.namespace, actor="test")
        try:
            await wait_api(client)
            await client.push("id: planned\nsteps:\n  - {id: a, type: noop}\n")
            started = [await client.start("planned", request_id=f"r{i}") for i in range(8)]
            assert len({s.instance_id for s in started}) == 8
            # Each start came alone (one at a time): eight batches, eight executions of the statement.
            async with start_pool.acquire() as a, start_pool.acquire() as b:
                assert await a.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
                (ga, ca), (gb, cb) = await plans_of(a, _START_BATCH), await plans_of(b, _START_BATCH)
            assert (ga + gb, ca + cb) == (8, 0)  # planned once, never for the values
            async with host.pool.acquire() as conn:
                assert await conn.fetchval("SHOW plan_cache_mode") == "auto"
                assert await plans_of(conn, _START_BATCH) == (0, 0)
            accepted = await host.pool.fetchval(
                "SELECT count(*) FROM accepted_start WHERE workflow_id = 'planned'"
            )
            assert accepted == 8
        finally:
            await client.close()
            host.request_shutdown()
            await asyncio.wait_for(task, 30)
