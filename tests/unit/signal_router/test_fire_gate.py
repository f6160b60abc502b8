"""The signal router's gate (``signal_router/gate.py``): what it counts toward a partition's limit, and
when it lets a held signal go. The probe is the real ``BacklogProbe``, not running: the test sets the
figures a read would have set (the probe against a real server is in
``tests/integration/test_backlog_probe.py``, the gate in a real stack in
``tests/e2e/test_load_shedding.py``)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from legato.bus.backlog import BacklogProbe
from legato.bus.consumer import Delivery, Retry
from legato.bus.topology import Topology, partition_of
from legato.signal_router.gate import FireGate
from legato.signal_router.matching import TriggerTable
from tests.unit.signal_router.test_matching import registered

PARTITIONS = 8
TOPO = Topology("g", PARTITIONS)
HOME = partition_of("wf", PARTITIONS)  # the partition of the workflow the test's triggers start


def gate(limit: int) -> tuple[FireGate, BacklogProbe]:
    probe = BacklogProbe(None, TOPO, PARTITIONS, interval=0.02)  # type: ignore[arg-type]
    table = TriggerTable.build(1, [registered("joined"), registered("single")])
    return FireGate(probe, limit, TOPO, lambda: table), probe


def delivery(name: str) -> Delivery[bytes]:
    raw: Any = None
    return Delivery(b"{}", raw, TOPO.signal_subject(name), {}, 1, 1, "")


def read(probe: BacklogProbe, figures: dict[int, int]) -> None:
    """One complete read of the probe, with these figures."""
    probe.record(figures)


async def test_signals_let_through_count_until_the_next_read() -> None:
    fire, probe = gate(limit=3)
    read(probe, {HOME: 1})
    # The probe says 1; two signals applied since make 3: the next one waits.
    for _ in range(2):
        async with fire.admit(delivery("orders")):
            pass
    assert fire.over({HOME}) == (HOME, 3)
    # A read that saw them (now 3 in the stream) keeps it closed; one that saw the scheduler take
    # them opens it.
    read(probe, {HOME: 3})
    assert fire.over({HOME}) == (HOME, 3)
    read(probe, {HOME: 0})
    assert fire.over({HOME}) is None


async def test_signals_being_applied_count_too() -> None:
    fire, probe = gate(limit=2)
    read(probe, {HOME: 0})
    inside = asyncio.Event()
    release = asyncio.Event()

    async def apply() -> None:
        async with fire.admit(delivery("payments")):
            inside.set()
            await release.wait()

    first = asyncio.create_task(apply())
    await inside.wait()
    inside.clear()
    second = asyncio.create_task(apply())
    await inside.wait()
    # Two being applied, none in the stream yet, and a read meanwhile does not forget them.
    read(probe, {HOME: 0})
    assert fire.over({HOME}) == (HOME, 2)
    third = asyncio.create_task(apply())
    await asyncio.sleep(0.1)
    assert not third.done() and fire.held == 1
    release.set()
    await asyncio.gather(first, second)
    read(probe, {HOME: 0})  # the scheduler took them
    await asyncio.wait_for(third, 2)
    assert fire.held == 0 and fire.held_total == 1


async def test_other_partitions_and_unknown_names_pass() -> None:
    fire, probe = gate(limit=1)
    read(probe, {p: (5 if p == HOME else 0) for p in range(PARTITIONS)})
    async with fire.admit(delivery("nobody.listens")):
        pass
    wait_subject: Any = TOPO.signal_wait_subject
    raw: Any = None
    async with fire.admit(Delivery(b"{}", raw, wait_subject, {}, 1, 1, "")):
        pass
    assert fire.held_total == 0
    assert fire.partitions("orders") == {HOME}
    assert "nobody.listens" not in fire._partitions  # names from outside are not kept


async def test_a_held_signal_is_given_back_when_the_router_stops() -> None:
    fire, probe = gate(limit=1)
    read(probe, {HOME: 7})

    async def apply() -> None:
        async with fire.admit(delivery("orders")):
            pytest.fail("applied while the partition was over the limit")

    held = asyncio.create_task(apply())
    await asyncio.sleep(0.05)
    probe.request_shutdown()
    with pytest.raises(Retry):
        await asyncio.wait_for(held, 2)
    assert fire.held == 0
    # One that comes after the shutdown, and after a read that was under way then, is given back at
    # once, not left waiting for a read that will not come.
    read(probe, {HOME: 7})
    with pytest.raises(Retry):
        await asyncio.wait_for(apply(), 2)
