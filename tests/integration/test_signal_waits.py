"""Step waits against a real PostgreSQL: the router alone writes ``signal_wait``, from the scheduler's
registration message that carries the predicate. A wait is satisfied exactly once whichever comes
first, the signal or the registration, and a run that ended has its waits cancelled, whichever of the
registration and the cancellation arrives first."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import msgspec
import pytest

from legato.bus.topology import Topology
from legato.protocol.messages import (
    SignalWaitRegistered,
    SignalWaitSatisfied,
    SignalWaitsCancelled,
    decode_event,
)
from legato.scheduler.repository import upsert_instances
from legato.scheduler.state import InstanceState
from legato.signal_router.ingest import IncomingSignal, SignalIngest
from legato.store import create_pool, run_transaction

TOPOLOGY = Topology("t")


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(database_url, max_size=6)
    yield p
    await p.close()


@pytest.fixture
def router(pool: asyncpg.Pool) -> SignalIngest:
    return SignalIngest(pool, TOPOLOGY, wake_relay=lambda: None)


async def run(pool: asyncpg.Pool, run_id: str, status: str = "running") -> None:
    async with pool.acquire() as conn, conn.transaction():
        await upsert_instances(
            conn,
            [
                InstanceState(
                    id=run_id,
                    workflow_id="wf",
                    version=1,
                    trigger_key=f"k-{run_id}",
                    trigger={"kind": "api"},
                    status=status,
                    params={},
                    run_params={},
                    created_at=datetime.now(UTC),
                    new=True,
                )
            ],
        )


def registration(run_id: str, index: int = 0, order: str = "o-1") -> SignalWaitRegistered:
    return SignalWaitRegistered(
        wait_id=f"{run_id}:approve:{index}",
        workflow_id="wf",
        instance_id=run_id,
        step_id="approve",
        name="approved",
        match={"order": {"op": "=", "value": order}},
    )


def signal(sig_id: str, order: str) -> IncomingSignal:
    return IncomingSignal(
        name="approved",
        id=sig_id,
        body={"order": order},
        raw=b"",
        headers={},
        stream_seq=0,
        published_at=datetime.now(UTC),
        traceparent=None,
    )


async def store(pool: asyncpg.Pool, router: SignalIngest, *signals: IncomingSignal) -> None:
    await run_transaction(pool, lambda conn: router.apply_signals(conn, list(signals)))


async def satisfied(pool: asyncpg.Pool) -> list[SignalWaitSatisfied]:
    out = []
    for r in await pool.fetch("SELECT payload FROM outbox WHERE msg_id LIKE 'waitsat:%' ORDER BY id"):
        msg = decode_event(r["payload"])
        assert isinstance(msg, SignalWaitSatisfied)
        out.append(msg)
    return out


async def waits(pool: asyncpg.Pool) -> dict[str, asyncpg.Record]:
    return {r["id"]: r for r in await pool.fetch("SELECT * FROM signal_wait")}


async def test_a_signal_stored_before_the_registration_satisfies_the_wait(
    pool: asyncpg.Pool, router: SignalIngest
) -> None:
    await run(pool, "r1")
    await store(pool, router, signal("s-other", "o-2"), signal("s-1", "o-1"))
    assert await waits(pool) == {}  # nothing waits yet: the signals are only stored
    assert await router.apply_wait(registration("r1")) == 1
    [msg] = await satisfied(pool)
    assert (msg.wait_id, msg.signal_id, msg.fields) == ("r1:approve:0", "s-1", {"order": "o-1"})
    row = (await waits(pool))["r1:approve:0"]
    assert row["satisfied_by"] == "s-1" and row["match"] == {"order": {"op": "=", "value": "o-1"}}
    # The registration again (a redelivery) and the same signal again change nothing.
    assert await router.apply_wait(registration("r1")) == 0
    await store(pool, router, signal("s-1", "o-1"), signal("s-3", "o-1"))
    assert len(await satisfied(pool)) == 1


async def test_a_signal_after_the_registration_satisfies_the_wait_once(
    pool: asyncpg.Pool, router: SignalIngest
) -> None:
    await run(pool, "r1")
    assert await router.apply_wait(registration("r1")) == 0
    assert not (await waits(pool))["r1:approve:0"]["satisfied_at"]
    await store(pool, router, signal("s-1", "o-1"))
    await store(pool, router, signal("s-2", "o-1"))
    [msg] = await satisfied(pool)
    assert msg.signal_id == "s-1"


async def test_signals_racing_registrations_satisfy_every_wait_exactly_once(
    pool: asyncpg.Pool, router: SignalIngest
) -> None:
    runs = [f"r{i}" for i in range(30)]
    for r in runs:
        await run(pool, r)
    other = SignalIngest(pool, TOPOLOGY, wake_relay=lambda: None)
    await asyncio.gather(
        *(router.apply_wait(registration(r, order=f"o-{i}")) for i, r in enumerate(runs)),
        *(store(pool, other, signal(f"s-{i}", f"o-{i}")) for i in range(len(runs))),
    )
    by_wait = {m.wait_id: m.signal_id for m in await satisfied(pool)}
    assert len(await satisfied(pool)) == len(runs)
    assert by_wait == {f"{r}:approve:0": f"s-{i}" for i, r in enumerate(runs)}


async def test_the_waits_of_an_ended_run_are_cancelled_whichever_message_comes_first(
    pool: asyncpg.Pool, router: SignalIngest
) -> None:
    await run(pool, "r1")
    await router.apply_wait(registration("r1"))
    await run(pool, "r1", "stopped")
    assert await router.apply_wait(SignalWaitsCancelled(workflow_id="wf", instance_id="r1")) == 0
    # The cancellation overtook a registration of the ended run: it is stored cancelled.
    await router.apply_wait(registration("r1", index=1))
    await store(pool, router, signal("s-1", "o-1"))
    assert await satisfied(pool) == []
    rows = await waits(pool)
    assert rows["r1:approve:0"]["cancelled"] and rows["r1:approve:1"]["cancelled"]


async def test_a_signal_for_a_run_that_just_ended_satisfies_nothing(
    pool: asyncpg.Pool, router: SignalIngest
) -> None:
    await run(pool, "r1")
    await router.apply_wait(registration("r1"))
    await run(pool, "r1", "stopped")  # its cancellation is still on its way to the router
    await store(pool, router, signal("s-1", "o-1"))
    assert await satisfied(pool) == []


def test_the_registration_carries_its_predicate_on_the_wire() -> None:
    wire = msgspec.json.encode(registration("r1"))
    back = msgspec.json.decode(wire, type=SignalWaitRegistered | SignalWaitsCancelled)
    assert back == registration("r1")


async def test_a_registration_for_a_deleted_run_stores_nothing(
    pool: asyncpg.Pool, router: SignalIngest
) -> None:
    assert await router.apply_wait(registration("gone")) == 0
    assert await waits(pool) == {}
