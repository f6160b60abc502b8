"""The executors' attempt claims against a real nats-server: exactly one claimant per attempt id,
whatever the path its create takes (the PubAck inbox, or ``KeyValue.create`` for a key with an entry)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from legato.bus import Topology
from legato.bus.connection import connect_with
from legato.bus.streams import provision_attempts_bucket
from legato.config.settings import Settings
from legato.executor import claims as claims_module
from legato.executor.claims import AttemptClaims, claim_key


@pytest.fixture
async def others(settings: Settings) -> AsyncIterator[list[Client]]:
    """Three more connections: each claimant is an executor of its own."""
    clients = [await connect_with(settings, name=f"legato-test-claimant-{i}") for i in range(3)]
    yield clients
    for client in clients:
        await client.close()


async def opened(nc: Client, topo: Topology) -> AttemptClaims:
    claims = AttemptClaims(nc.jetstream(), topo.attempts_bucket)
    await claims.open()
    return claims


async def test_of_four_executors_claiming_the_same_attempts_at_once_exactly_one_holds_each(
    nc: Client, others: list[Client], topo: Topology
) -> None:
    await provision_attempts_bucket(nc.jetstream(), topo)
    claimants = [await opened(c, topo) for c in (nc, *others)]
    attempt_ids = [f"att-{uuid.uuid4().hex}" for _ in range(50)]

    async def claim_all(claims: AttemptClaims, name: str) -> list[str | None]:
        held = await asyncio.gather(*(claims.claim(a, name) for a in attempt_ids))
        return [None if h is None else h.executor for h in held]

    names = [f"exec-{i}" for i in range(len(claimants))]
    answers = await asyncio.gather(*(claim_all(c, n) for c, n in zip(claimants, names, strict=True)))
    for pos, attempt_id in enumerate(attempt_ids):
        winners = [names[i] for i, a in enumerate(answers) if a[pos] is None]
        assert len(winners) == 1, (attempt_id, winners)
        # Every other claimant was told who holds it, and the bucket agrees.
        assert {a[pos] for a in answers if a[pos] is not None} <= {winners[0]}
        record = await claimants[0].get(attempt_id)
        assert record is not None and record.executor == winners[0]
    # A claimant asking again, later, is refused with the holder's record.
    again = await claimants[1].claim(attempt_ids[0], "exec-late")
    assert again is not None and again.executor in names


async def test_a_fresh_claim_is_one_publish_through_the_pub_ack_inbox(
    nc: Client, topo: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The common case never reaches nats-py's ``KeyValue.create`` (its request costs twice the CPU);
    a conflicting one does, so that a deleted key's marker is handled as nats-py handles it."""
    await provision_attempts_bucket(nc.jetstream(), topo)
    claims = await opened(nc, topo)
    creates: list[str] = []
    real_create = claims.kv.create

    async def counted(key: str, value: bytes, *args: object, **kwargs: object) -> int:
        creates.append(key)
        return await real_create(key, value)

    monkeypatch.setattr(claims.kv, "create", counted)
    assert await claims.claim("att-fresh", "exec-a") is None
    assert creates == []
    held = await claims.claim("att-fresh", "exec-b")
    assert held is not None and held.executor == "exec-a"
    assert creates == [claim_key("att-fresh")]


async def test_an_attempt_whose_claim_was_deleted_can_be_claimed_again(nc: Client, topo: Topology) -> None:
    """An operator's ``nats kv del`` of a claim leaves a delete marker: the next claim writes over it,
    as ``KeyValue.create`` always did, instead of finding the key neither free nor held."""
    await provision_attempts_bucket(nc.jetstream(), topo)
    claims = await opened(nc, topo)
    assert await claims.claim("att-deleted", "exec-a") is None
    await claims.kv.delete(claim_key("att-deleted"))
    assert await claims.get("att-deleted") is None
    assert await claims.claim("att-deleted", "exec-b") is None
    record = await claims.get("att-deleted")
    assert record is not None and record.executor == "exec-b"
    held = await claims.claim("att-deleted", "exec-c")
    assert held is not None and held.executor == "exec-b"


async def test_a_claim_whose_answer_is_lost_is_settled_by_reading_the_key_back(
    nc: Client, topo: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The create landed but its PubAck never came (here: the reply is dropped): after the timeout the
    claimant reads the record, finds its own token and holds the attempt; another claimant does not."""
    await provision_attempts_bucket(nc.jetstream(), topo)
    claims = await opened(nc, topo)
    monkeypatch.setattr(claims_module, "KV_TIMEOUT", 0.5)

    async def reply_lost(subject: str, payload: bytes, headers: dict[str, str] | None = None) -> object:
        await nc.publish(subject, payload, headers=headers)  # stored, but nobody waits for its PubAck
        await nc.flush()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    monkeypatch.setattr(claims.acks, "publish", reply_lost)
    assert await claims.claim("att-unanswered", "exec-a") is None
    held = await claims.claim("att-unanswered", "exec-b")
    assert held is not None and held.executor == "exec-a"
