"""The trigger process: the API, the registry, and cron time triggers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from legato.bus.backlog import BacklogProbe
from legato.config.settings import Settings
from legato.runtime.host import ServiceHost
from legato.security.wiring import request_verifier
from legato.store.pool import close_pool, create_pool
from legato.trigger.api import ApiService
from legato.trigger.authz import Authz
from legato.trigger.backfill import BackfillLoop
from legato.trigger.cron import CronLoop, cron_clock


@asynccontextmanager
async def _start_pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """The connections that commit batches of starts (one batch at a time; the second is spare): their
    sessions plan the start statement once (``create_pool``'s ``generic_plans``), where the default
    planned it again for every batch. The API's other queries keep the host's pool: they filter on
    optional values, which one plan for all values would serve badly."""
    pool = await create_pool(
        settings.database_url, min_size=1, max_size=2, application_name="legato-trigger", generic_plans=True
    )
    try:
        yield pool
    finally:
        await close_pool(pool)


async def run_trigger(settings: Settings) -> None:
    """Run the trigger: the API, cron and backfills, until shutdown."""
    async with ServiceHost("trigger", settings) as host, _start_pool(settings) as start_pool:
        authz = Authz(request_verifier(settings), max_request_bytes=settings.api_max_request_bytes)
        backfills = BackfillLoop(
            host.pool,
            host.topology,
            wake_relay=host.wake_relay,
            nc=host.nc,
            tick=settings.backfill_poll_interval,
        )
        backlog = None
        if settings.api_max_backlog:
            backlog = BacklogProbe(host.nc.jetstream(), host.topology, settings.partitions)
            host.add(backlog)
        host.add(
            ApiService(
                host.nc,
                host.pool,
                host.topology,
                wake_relay=host.wake_relay,
                relay_committed=host.relay_committed,
                authz=authz,
                publisher=host.publisher,
                wake_backfills=backfills.wake,
                backlog=backlog,
                max_backlog=settings.api_max_backlog,
                start_pool=start_pool,
            )
        )
        clock = cron_clock(settings.test_cron_clock_file)
        host.add(CronLoop(host.pool, host.topology, wake_relay=host.wake_relay, clock=clock))
        host.add(backfills)
        await host.run()
