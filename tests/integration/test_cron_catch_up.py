"""Cron catch-up policies after a simulated 3-day outage, with an injected clock, against a real Postgres:
which missed fires start runs (the StartRuns in the outbox), which are recorded as skipped runs with the
reason, across a daylight-saving change in two zones; and a second replica never fires again."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from legato.bus.topology import Topology
from legato.core import parse_definition
from legato.protocol import decode_trigger
from legato.protocol.events import decode_event
from legato.protocol.messages import StartRun
from legato.store import create_pool
from legato.trigger.cron import CronLoop
from legato.trigger.registry import push_workflow

TOPOLOGY = Topology(namespace="t", partitions=4)

# (zone, outage start (UTC), fires in the 72 h after it, a fire time that must appear, one that must not)
ZONES = [
    # Paris falls back on 2026-10-25 (03:00 CEST -> 02:00 CET): 02:00 happens twice and fires once, at
    # its first occurrence (00:00 UTC), so 72 hours hold 71 hourly fires.
    ("Europe/Paris", datetime(2026, 10, 23, 12, 30, tzinfo=UTC), 71, "2026-10-25T00:00", "2026-10-25T01:00"),
    # New York springs forward on 2026-03-08 (02:00 EST -> 03:00 EDT): 02:00 does not exist and resolves
    # to 03:00 EDT (07:00 UTC), the same instant as the 03:00 fire: one fire, 72 in 72 hours.
    (
        "America/New_York",
        datetime(2026, 3, 6, 12, 30, tzinfo=UTC),
        72,
        "2026-03-08T07:00",
        "2026-03-08T06:30",
    ),
]


def definition(wf: str, zone: str, **extra: Any) -> str:
    fields = "".join(f", {k}: {v}" for k, v in extra.items())
    return (
        f"id: {wf}\nrun_strategy: {{type: parallel, max_concurrency: 1000}}\n"
        f"triggers:\n  - {{type: cron, id: hourly, cron: '0 * * * *', timezone: {zone}{fields}}}\n"
        "steps:\n  - {id: a, type: noop}\n"
    )


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(database_url, max_size=4)
    try:
        yield p
    finally:
        await p.close()


async def push(pool: asyncpg.Pool, text: str) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await push_workflow(
            conn, TOPOLOGY, parse_definition(text), source_text=text, actor="t", activate=True
        )


def loop(pool: asyncpg.Pool, clock: Callable[[], datetime]) -> CronLoop:
    return CronLoop(pool, TOPOLOGY, wake_relay=lambda: None, clock=clock)


async def drain(cron: CronLoop) -> int:
    """Rounds until a round changes nothing (a long outage takes several chunks)."""
    total = 0
    for _ in range(50):
        before = cron.skipped
        started = await cron.fire_due()
        total += started
        if not started and cron.skipped == before:
            return total
    raise AssertionError("cron rounds never settled")


async def started_fires(pool: asyncpg.Pool, wf: str) -> list[str]:
    """Fire times of the StartRuns in the outbox, in outbox order."""
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT payload FROM outbox WHERE msg_id LIKE 'start:%' ORDER BY id")
    out = []
    for r in rows:
        msg = decode_trigger(bytes(r["payload"]))
        assert isinstance(msg, StartRun)
        if msg.workflow_id == wf:
            fire = datetime.fromisoformat(str(msg.trigger.details["fire_time"])).astimezone(UTC).isoformat()
            assert msg.trigger_key == f"cron:hourly:{fire}"  # the scheduled time is the run's key
            out.append(fire)
    return out


async def skipped_runs(pool: asyncpg.Pool, wf: str) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return list(
            await conn.fetch(
                "SELECT id, trigger_key, trigger, status, reason, error FROM workflow_instance "
                "WHERE workflow_id = $1 ORDER BY trigger_key",
                wf,
            )
        )


async def outage(pool: asyncpg.Pool, wf: str, text: str, start: datetime) -> tuple[Clock, CronLoop]:
    await push(pool, text)
    clock = Clock(start)
    cron = loop(pool, clock)
    assert await drain(cron) == 0  # first sight: the cursor starts now
    clock.now = start + timedelta(days=3)
    return clock, cron


@pytest.mark.parametrize(("zone", "start", "count", "present", "absent"), ZONES)
async def test_catch_up_all_runs_every_missed_fire_oldest_first(
    pool: asyncpg.Pool, zone: str, start: datetime, count: int, present: str, absent: str
) -> None:
    _, cron = await outage(pool, "wf", definition("wf", zone, catch_up="all", max_catch_up=500), start)
    assert await drain(cron) == count
    fires = await started_fires(pool, "wf")
    assert len(fires) == count
    assert fires == sorted(fires)
    assert any(f.startswith(present) for f in fires)
    assert not any(f.startswith(absent) for f in fires)
    assert await skipped_runs(pool, "wf") == []
    # a restart (a new loop) or a second replica at the same time fires nothing again
    again = loop(pool, lambda: start + timedelta(days=3))
    assert await drain(again) == 0
    assert len(await started_fires(pool, "wf")) == count


@pytest.mark.parametrize(("zone", "start", "count", "present", "absent"), ZONES)
async def test_catch_up_all_is_bounded_by_max_catch_up(
    pool: asyncpg.Pool, zone: str, start: datetime, count: int, present: str, absent: str
) -> None:
    _, cron = await outage(pool, "wf", definition("wf", zone, catch_up="all", max_catch_up=10), start)
    assert await drain(cron) == 10
    fires = await started_fires(pool, "wf")
    skipped = await skipped_runs(pool, "wf")
    assert len(skipped) == count - 10
    newest_skipped = max(r["trigger"]["details"]["fire_time"] for r in skipped)
    assert datetime.fromisoformat(newest_skipped) < datetime.fromisoformat(fires[0])  # the newest 10 ran
    assert {r["status"] for r in skipped} == {"skipped"}
    assert all("beyond max_catch_up 10" in r["reason"]["message"] for r in skipped)
    # Each skipped run's one lifecycle event went into the event outbox with its row (docs/events.md).
    rows = await pool.fetch(
        "SELECT s.subject, p.payload, m.msg_id FROM event_outbox e, unnest(e.subjects) WITH ORDINALITY s(subject, n) "
        "JOIN unnest(e.payloads) WITH ORDINALITY p(payload, n) USING (n) "
        "JOIN unnest(e.msg_ids) WITH ORDINALITY m(msg_id, n) USING (n)"
    )
    assert all(r["subject"].endswith("legato.notify.run.wf.skipped") for r in rows)
    events = [decode_event(r["payload"]) for r in rows]
    assert [r["msg_id"] for r in rows] == [e.event_id for e in events]
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE subject LIKE '%notify%'") == 0
    assert sorted(e.instance_id for e in events) == sorted(r["id"] for r in skipped)
    assert all(e.seq == 1 and e.previous_status is None and e.reason == "missed" for e in events)


@pytest.mark.parametrize(("zone", "start", "count", "present", "absent"), ZONES)
async def test_catch_up_latest_runs_only_the_newest(
    pool: asyncpg.Pool, zone: str, start: datetime, count: int, present: str, absent: str
) -> None:
    _, cron = await outage(pool, "wf", definition("wf", zone, catch_up="latest"), start)
    assert await drain(cron) == 1
    fires = await started_fires(pool, "wf")
    assert fires == [(start + timedelta(days=3)).replace(minute=0).isoformat()]
    skipped = await skipped_runs(pool, "wf")
    assert len(skipped) == count - 1
    reason = skipped[0]["reason"]
    assert reason["code"] == "missed" and reason["policy"] == "latest"
    assert "superseded" in reason["message"] and fires[0] in reason["message"]
    assert skipped[0]["error"] == reason["message"]  # what `legato instances` shows in "why / error"


@pytest.mark.parametrize(("zone", "start", "count", "present", "absent"), ZONES)
async def test_catch_up_none_skips_every_missed_fire_then_fires_on_time(
    pool: asyncpg.Pool, zone: str, start: datetime, count: int, present: str, absent: str
) -> None:
    clock, cron = await outage(pool, "wf", definition("wf", zone, catch_up="none"), start)
    assert await drain(cron) == 0
    skipped = await skipped_runs(pool, "wf")
    assert len(skipped) == count
    assert all(r["reason"]["policy"] == "none" and "late" in r["reason"]["message"] for r in skipped)
    # the next fire, seen 5 s after its time, is on time and runs
    clock.now = (start + timedelta(days=3, hours=1)).replace(minute=0, second=5)
    assert await drain(cron) == 1
    assert await started_fires(pool, "wf") == [clock.now.replace(second=0).isoformat()]


async def test_start_end_and_jitter(pool: asyncpg.Pool) -> None:
    t0 = datetime(2026, 6, 1, 0, 0, 30, tzinfo=UTC)
    text = definition(
        "wf",
        "UTC",
        catch_up="all",
        start="'2026-06-01T02:00:00Z'",
        end="'2026-06-01T05:00:00Z'",
        jitter="30m",
    )
    await push(pool, text)
    clock = Clock(t0)
    cron = loop(pool, clock)
    await drain(cron)
    clock.now = datetime(2026, 6, 1, 1, 59, tzinfo=UTC)
    assert await drain(cron) == 0  # 01:00 is before start
    # with 30m of jitter a fire waits up to 30 minutes past its time; by +30 min every fire is due
    seen: dict[str, datetime] = {}
    for minute in range(0, 8 * 60, 5):
        clock.now = datetime(2026, 6, 1, 2, 0, tzinfo=UTC) + timedelta(minutes=minute)
        await drain(cron)
        for f in await started_fires(pool, "wf"):
            seen.setdefault(f, clock.now)
    assert list(seen) == [f"2026-06-01T0{h}:00:00+00:00" for h in (2, 3, 4, 5)]  # nothing after end
    delays = [seen[f] - datetime.fromisoformat(f) for f in seen]
    assert all(timedelta(0) <= d <= timedelta(minutes=35) for d in delays), delays
    assert max(delays) > timedelta(minutes=5), delays  # the jitter is real: fires wait past their time
    assert await skipped_runs(pool, "wf") == []


async def test_jitter_delays_fires_differently(pool: asyncpg.Pool) -> None:
    from legato.trigger.cron import jitter_offset

    base = datetime(2026, 6, 1, tzinfo=UTC)
    offsets = {
        jitter_offset("wf", "hourly", base + timedelta(hours=h), 1800).total_seconds() for h in range(24)
    }
    assert len(offsets) > 10 and all(0 <= o < 1800 for o in offsets)
    assert jitter_offset("wf", "hourly", base, 1800) == jitter_offset("wf", "hourly", base, 1800)


async def test_fires_built_ahead_are_the_same_runs_and_a_pause_still_wins(pool: asyncpg.Pool) -> None:
    """The StartRuns built a few seconds before a fire time carry the same key, run id and params as
    those built at the fire, requested at the fire time; a pause committed after they were built still
    records the fire as skipped (the fire's transaction reads the workflow row)."""
    t0 = datetime(2026, 6, 1, 0, 0, 30, tzinfo=UTC)
    for wf in ("ahead", "held"):
        await push(pool, definition(wf, "UTC", catch_up="none"))
    clock = Clock(t0)
    cron = loop(pool, clock)
    assert await drain(cron) == 0  # first sight
    fire = datetime(2026, 6, 1, 1, 0, tzinfo=UTC)
    clock.now = fire - timedelta(seconds=3)
    before = datetime.now(UTC).timestamp()
    cron._prepare_ahead()
    assert {k[0] for k in cron._ready} == {"ahead", "held"}
    async with pool.acquire() as conn:
        await conn.execute("UPDATE workflow SET paused = true, paused_by = 'ops' WHERE id = 'held'")
    clock.now = fire + timedelta(milliseconds=5)
    assert await drain(cron) == 1
    assert await started_fires(pool, "ahead") == [fire.isoformat()]
    async with pool.acquire() as conn:
        payload = await conn.fetchval("SELECT payload FROM outbox WHERE msg_id LIKE 'start:%'")
    msg = decode_trigger(bytes(payload))
    assert isinstance(msg, StartRun) and msg.workflow_id == "ahead"
    assert 2.0 <= msg.requested_at - before <= 4.0  # the fire time's wall-clock instant, 3 s ahead
    assert [r["status"] for r in await skipped_runs(pool, "held")] == ["skipped"]
    assert [k[0] for k in cron._ready] == ["held"]  # used once; the unused one is replaced next time
