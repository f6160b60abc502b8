"""The backlog probe (``bus/backlog.py``) against a real nats-server, connected as the trigger or the
signal router: it reads every partition's scheduler consumer (messages not delivered plus delivered
and not acked) in one ``CONSUMER.LIST`` request per 256 consumers, which only those two roles may
make; and it reads only while someone asks for figures, once at once after a quiet spell."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import msgspec
import nats
import pytest
from nats.aio.client import Client

from legato.bus import Topology, provision_streams
from legato.bus.backlog import LIST_PAGE, BacklogProbe
from legato.bus.connection import connect_with, nats_auth_options
from legato.bus.consumer import Delivery
from legato.bus.streams import ConsumerSpec, provision_consumer
from legato.bus.topology import partition_of
from legato.config.settings import Settings
from legato.security.keyring import Keyring
from legato.signal_router.gate import FireGate
from legato.signal_router.matching import TriggerTable
from tests.support.stack import until
from tests.unit.signal_router.test_matching import registered


def as_identity(settings: Settings, keyring: Keyring | None, identity: str) -> Settings:
    if keyring is None:
        pytest.fail("the probe's permissions are tested against the suite's own nats-server (with auth)")
    return msgspec.structs.replace(settings, nats_creds=str(keyring.seed_file(identity)))


@pytest.fixture
async def two(settings: Settings, nc: Client) -> Topology:
    """Two partitions, each with its scheduler consumer."""
    topo = Topology(settings.namespace, 2)
    await scheduler_consumers(nc, topo, range(2))
    return topo


async def scheduler_consumers(nc: Client, topo: Topology, partitions: range) -> None:
    """The streams, and the scheduler's trigger consumer of each partition in ``partitions``."""
    js = nc.jetstream()
    await provision_streams(js, topo)
    for p in partitions:
        spec = ConsumerSpec(
            topo.triggers_stream, topo.scheduler_triggers_consumer(p), topo.trigger_partition_filter(p)
        )
        await provision_consumer(js, spec)


async def publish_to(nc: Client, topo: Topology, partition: int, count: int) -> None:
    js = nc.jetstream()
    subject = topo.trigger_partition_filter(partition).replace(">", "wf")
    for i in range(count):
        await js.publish(subject, f"{partition}-{i}".encode())


@pytest.mark.parametrize("identity", ["trigger", "signal_router"])
async def test_one_request_reads_every_partition_with_a_services_rights(
    settings: Settings, keyring: Keyring | None, nc: Client, identity: str
) -> None:
    topo = Topology(settings.namespace, 4)
    await scheduler_consumers(nc, topo, range(3))  # partition 3: no scheduler has taken it yet
    await publish_to(nc, topo, 0, 5)
    await publish_to(nc, topo, 1, 2)
    # Delivered and not acked still waits for the scheduler.
    pulled = await nc.jetstream().pull_subscribe_bind(
        topo.scheduler_triggers_consumer(1), stream=topo.triggers_stream
    )
    [held] = await pulled.fetch(1, timeout=5)

    service = await connect_with(as_identity(settings, keyring, identity), name=f"test-{identity}")
    try:
        probe = BacklogProbe(service.jetstream(), topo, 4)
        await probe.probe()
        assert probe.backlog == {0: 5, 1: 2, 2: 0, 3: 0}
        assert probe.requests == 1
        await held.ack()
        await publish_to(nc, topo, 2, 1)
        want = {0: 5, 1: 1, 2: 1, 3: 0}
        await until(lambda: _read(probe, want), 10, lambda: f"backlog {probe.backlog}, want {want}")
    finally:
        await service.close()


async def _read(probe: BacklogProbe, want: dict[int, int]) -> bool:
    await probe.probe()
    return probe.backlog == want


async def test_more_partitions_than_a_page(settings: Settings, keyring: Keyring | None, nc: Client) -> None:
    partitions = LIST_PAGE + 4
    topo = Topology(settings.namespace, partitions)
    await scheduler_consumers(nc, topo, range(partitions))
    await publish_to(nc, topo, 3, 1)
    await publish_to(nc, topo, partitions - 1, 2)
    trigger = await connect_with(as_identity(settings, keyring, "trigger"), name="test-trigger")
    try:
        probe = BacklogProbe(trigger.jetstream(), topo, partitions)
        await probe.probe()
        assert probe.requests == 2  # two pages, not one request per partition
        assert {p: n for p, n in probe.backlog.items() if n} == {3: 1, partitions - 1: 2}
        assert len(probe.backlog) == partitions
    finally:
        await trigger.close()


async def test_no_other_role_may_list_consumers(
    settings: Settings, keyring: Keyring | None, two: Topology
) -> None:
    for identity in ("executor", "scheduler", "admin", "viewer", "publisher"):
        await list_refused(as_identity(settings, keyring, identity), two.triggers_stream)


async def list_refused(settings: Settings, stream: str) -> None:
    """The identity of ``settings`` asks for the stream's consumers: nats-server refuses the request
    (reported on the connection; the request itself gets no answer), and refuses nothing else."""
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    # The identity's own options (its inbox prefix included), and our ear on the server's errors.
    nc = await nats.connect(settings.nats_url, error_cb=on_error, **nats_auth_options(settings))
    try:
        with pytest.raises(nats.errors.TimeoutError):
            await nc.jetstream(timeout=1).consumers_info(stream)
        await until(
            lambda: _true(any("consumer.list" in str(e).lower() for e in errors)),
            5,
            lambda: f"{settings.nats_creds}: no permissions violation reported, errors {errors}",
        )
        assert all("permissions violation for publish to" in str(e).lower() for e in errors), errors
    finally:
        await nc.close()


async def test_it_reads_while_starts_come_and_at_once_after_a_quiet_spell(
    settings: Settings, keyring: Keyring | None, nc: Client, two: Topology
) -> None:
    topo = two
    trigger = await connect_with(as_identity(settings, keyring, "trigger"), name="test-trigger")
    probe = BacklogProbe(trigger.jetstream(), topo, 2, interval=0.1)
    task = asyncio.create_task(probe.run())
    try:
        await until(lambda: _true(probe.requests == 1), 5, lambda: f"{probe.requests} requests")
        await asyncio.sleep(0.5)  # five intervals, nobody asking: no request
        assert probe.requests == 1
        # A backlog grows meanwhile (signal fires, cron): the first start after the quiet spell reads
        # the figure from before it, and a fresh one is read at once.
        await publish_to(nc, topo, 1, 3)
        assert probe.of(1) == 0
        await until(lambda: _true(probe.backlog.get(1) == 3), 5, lambda: f"backlog {probe.backlog}")
        assert probe.requests == 2
        # Starts coming: a read every interval, for as long as they come.
        for _ in range(10):
            probe.of(0)
            await asyncio.sleep(0.05)
        assert probe.requests >= 4, probe.requests
    finally:
        await probe.shutdown()
        await asyncio.wait_for(task, 5)
        await trigger.close()


async def _true(value: bool) -> bool:
    return value


async def test_a_probe_that_cannot_read_leaves_the_router_to_its_last_figure(
    settings: Settings, nc: Client, two: Topology
) -> None:
    """The signals a router let through count until the next read; if reads fail for ten intervals
    (here: the stream is gone), only the last figure counts, so the gate does not close for good:
    a signal held meanwhile is let go too."""
    probe = BacklogProbe(nc.jetstream(), two, 2, interval=0.02)
    assert probe.stale()  # no figure yet
    await probe.probe()
    assert not probe.stale() and probe.backlog == {0: 0, 1: 0}
    table = TriggerTable.build(1, [registered("single")])
    fire = FireGate(probe, 2, two, lambda: table)
    home = partition_of("wf", 2)
    signal = Delivery(b"{}", cast(Any, None), two.signal_subject("orders"), {}, 1, 1, "")
    for _ in range(2):
        async with fire.admit(signal):
            pass
    assert fire.over({home}) == (home, 2)  # two let through since the read: at the limit
    await nc.jetstream().delete_stream(two.triggers_stream)

    async def apply() -> None:
        async with fire.admit(signal):
            pass

    held = asyncio.create_task(apply())
    await asyncio.sleep(0)
    assert fire.held == 1
    running = asyncio.create_task(probe.run())
    try:
        await asyncio.wait_for(held, 5)  # let go once the reads have failed for ten intervals
        assert probe.stale() and probe.reads == 1
        assert fire.over({home}) is None  # the last figure, 0, alone
        assert fire.held == 0 and fire.held_total == 1
    finally:
        await probe.shutdown()
        await asyncio.wait_for(running, 5)
