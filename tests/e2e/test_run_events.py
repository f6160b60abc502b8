"""Run lifecycle events (docs/events.md) through the real services: every committed status change of a
run and its steps arrives once and in order; a subscriber resumes from its last sequence; a group
shares the events; a scheduler killed with -9 under load loses and repeats none; wait/wait_all return
on the end event; only readers may read events, and events carry no params."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import msgspec
import nats
import nats.errors
import pytest
from nats.aio.msg import Msg

from legato.bus.publisher import caught_up
from legato.bus.topology import Topology
from legato.client import LegatoClient
from legato.client.events import EventSubscription, SubscriptionError, subscribe_runs
from legato.config.settings import Settings
from legato.protocol.events import RunEvent, StepEvent
from tests.e2e.test_spine import FLAKY, PIPELINE
from tests.support.auth import creds_for
from tests.support.stack import running_stack

TERMINAL = ("succeeded", "failed", "timed_out", "stopped", "skipped")

NOOP = """
id: quick
run_strategy: {type: parallel, max_concurrency: 200}
params:
  token: {type: string, default: "none"}
steps:
  - id: only
    type: noop
"""

SLOW = """
id: slow
steps:
  - id: nap
    type: sleep
    duration: 30
"""


async def collect(
    sub: EventSubscription[RunEvent] | EventSubscription[StepEvent],
    until: set[str],
    timeout: float = 60.0,
) -> list[RunEvent | StepEvent]:
    """Events from ``sub`` until every run in ``until`` has its end event (run subscriptions)."""
    out: list[RunEvent | StepEvent] = []
    left = set(until)
    deadline = time.monotonic() + timeout
    while left:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no end event for {sorted(left)[:5]} within {timeout}s; got {len(out)}")
        event = await asyncio.wait_for(anext(sub), remaining)
        out.append(event)
        if isinstance(event, RunEvent) and event.status in TERMINAL:
            left.discard(event.instance_id)
    return out


async def drain(sub: EventSubscription[StepEvent], count: int, timeout: float = 60.0) -> list[StepEvent]:
    """Exactly ``count`` step events (fails if they do not come)."""
    out: list[StepEvent] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        out.append(await asyncio.wait_for(anext(sub), max(0.1, deadline - time.monotonic())))
    return out


async def notify_counts(settings: Settings, ids: Sequence[str]) -> tuple[dict[str, tuple[str, int]], int]:
    """Each run's (status, notify_seq) and the sum of its steps' notify_seq, from Postgres."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        runs = {
            r["id"]: (r["status"], r["notify_seq"])
            for r in await conn.fetch(
                "SELECT id, status, notify_seq FROM workflow_instance WHERE id = ANY($1::text[])", list(ids)
            )
        }
        steps = await conn.fetchval(
            "SELECT coalesce(sum(notify_seq), 0) FROM step_run WHERE instance_id = ANY($1::text[])", list(ids)
        )
        return runs, int(steps)
    finally:
        await conn.close()


def check_chain(events: Sequence[RunEvent | StepEvent]) -> None:
    """Per run (or step): seq 1, 2, 3 … without gap or repeat, each previous_status the status before."""
    assert len({e.event_id for e in events}) == len(events), "an event arrived twice"
    assert len({e.stream_seq for e in events}) == len(events)
    assert [e.stream_seq for e in events] == sorted(e.stream_seq for e in events), "out of stream order"
    chains: dict[str, list[RunEvent | StepEvent]] = defaultdict(list)
    for e in events:
        key = e.instance_id if isinstance(e, RunEvent) else f"{e.instance_id}/{e.step_id}"
        chains[key].append(e)
    for key, chain in chains.items():
        assert [e.seq for e in chain] == list(range(1, len(chain) + 1)), (key, [e.seq for e in chain])
        assert chain[0].previous_status is None, (key, chain[0])
        for before, after in itertools.pairwise(chain):
            assert after.previous_status == before.status, (key, before, after)
            assert after.at >= before.at, (key, before, after)


async def test_each_status_change_arrives_once_and_in_order(settings: Settings, tmp_path: Path) -> None:
    async with running_stack(settings, tmp_path) as (_stack, client):
        await client.push(PIPELINE, source="pipeline.yaml")
        await client.push(FLAKY)
        runs_sub = await client.subscribe_runs()
        steps_sub = await client.subscribe_steps()
        ok = [await client.start("pipeline", {"rows": i}) for i in range(3)]
        bad = await client.start("flaky")
        ids = [r.instance_id for r in [*ok, bad]]
        run_events = await collect(runs_sub, set(ids))
        await client.wait_all(ids, timeout=60)
        db_runs, db_step_changes = await notify_counts(settings, ids)
        step_events = await drain(steps_sub, db_step_changes)
        await runs_sub.close()
        await steps_sub.close()
    check_chain(run_events)
    check_chain(step_events)
    by_run: dict[str, list[str]] = defaultdict(list)
    for e in run_events:
        by_run[e.instance_id].append(e.status)
    for run_id in ids:
        status, seq = db_runs[run_id]
        assert by_run[run_id][-1] == status
        assert len(by_run[run_id]) == seq, (run_id, by_run[run_id], seq)  # none missing, none extra
        assert by_run[run_id][-2:] == ["running", status]
    assert db_runs[bad.instance_id][0] == "failed"
    flaky = [e for e in step_events if e.instance_id == bad.instance_id and e.step_id == "boom"]
    statuses = [e.status for e in flaky]
    # Three attempts: queued, (running), retrying, queued again …, failed at the end, attempt 3.
    assert statuses.count("retrying") == 2 and statuses[-1] == "failed", statuses
    assert flaky[-1].attempt == 3
    ended = [e for e in run_events if e.status in TERMINAL]
    assert all(e.workflow_id in ("pipeline", "flaky") for e in ended)


async def test_a_subscriber_resumes_from_its_last_sequence(settings: Settings, tmp_path: Path) -> None:
    async with running_stack(settings, tmp_path) as (_stack, client):
        await client.push(NOOP)
        first = await client.subscribe_runs(workflow="quick")
        batch1 = [await client.start("quick") for _ in range(10)]
        seen = await collect(first, {r.instance_id for r in batch1})
        # Went away with events still coming: resumes after the last one it handled.
        more = [await client.start("quick") for _ in range(10)]
        await first.close()
        await client.wait_all(more, timeout=60)
        resumed = await client.subscribe_runs(workflow="quick", since=seen[-1].stream_seq)
        rest = await collect(resumed, {r.instance_id for r in more})
        await resumed.close()
        # Everything from the start, read again from the first event's sequence.
        replay = await client.subscribe_runs(workflow="quick", since=seen[0].stream_seq - 1)
        everything = await collect(replay, {r.instance_id for r in [*batch1, *more]})
        await replay.close()
        # Since a time, and filtered to a list of statuses (these runs are never queued).
        by_time = await client.subscribe_runs(
            workflow="quick", status=["running", "succeeded"], since=seen[0].at - 0.001
        )
        timed = await collect(by_time, {r.instance_id for r in [*batch1, *more]})
        await by_time.close()
    assert [e.event_id for e in seen + rest] == [e.event_id for e in everything]
    assert [e.event_id for e in timed] == [e.event_id for e in everything]
    check_chain(seen + rest)


async def test_a_group_of_two_shares_the_events_without_duplicates(
    settings: Settings, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path) as (_stack, client):
        await client.push(NOOP)
        topo = Topology(settings.namespace, settings.partitions)
        one = await subscribe_runs(client.nc, topo, workflow="quick", status="succeeded", group="g1", batch=1)
        two = await subscribe_runs(client.nc, topo, workflow="quick", status="succeeded", group="g1", batch=1)
        runs = [await client.start("quick") for _ in range(40)]
        want = {r.instance_id for r in runs}
        got: dict[str, list[str]] = {"one": [], "two": []}

        async def read(name: str, sub: EventSubscription[RunEvent]) -> None:
            async for event in sub:
                got[name].append(event.instance_id)
                await asyncio.sleep(0.01)  # a consumer doing some work

        readers = [asyncio.create_task(read("one", one)), asyncio.create_task(read("two", two))]
        deadline = time.monotonic() + 60
        while set(got["one"]) | set(got["two"]) != want and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await one.close()
        await two.close()
    both = got["one"] + got["two"]
    assert set(both) == want
    assert len(both) == len(want), "an event went to both members"
    assert got["one"] and got["two"], {k: len(v) for k, v in got.items()}


@pytest.mark.xdist_group("heavy")
async def test_kill_9_of_the_scheduler_loses_and_repeats_no_event(settings: Settings, tmp_path: Path) -> None:
    async with running_stack(settings, tmp_path) as (stack, client):
        await client.push(NOOP)
        runs_sub = await client.subscribe_runs(workflow="quick")
        steps_sub = await client.subscribe_steps(workflow="quick")
        starts = [asyncio.create_task(client.start("quick")) for _ in range(150)]
        await asyncio.sleep(0.5)
        stack["scheduler"].kill9()
        await asyncio.sleep(0.5)
        stack["scheduler"].start()
        ids = [(await s).instance_id for s in starts]
        await client.wait_all(ids, timeout=180)
        run_events = await collect(runs_sub, set(ids), timeout=120)
        db_runs, db_step_changes = await notify_counts(settings, ids)
        step_events = await drain(steps_sub, db_step_changes, timeout=120)
        await runs_sub.close()
        # Nothing more than the database recorded comes afterwards.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(steps_sub), 2.0)
        await steps_sub.close()
    check_chain(run_events)
    check_chain(step_events)
    counts: dict[str, int] = defaultdict(int)
    for e in run_events:
        counts[e.instance_id] += 1
    for run_id in ids:
        status, seq = db_runs[run_id]
        assert status == "succeeded"
        assert counts[run_id] == seq, (run_id, counts[run_id], seq)


async def test_wait_and_wait_all_return_on_the_end_event(settings: Settings, tmp_path: Path) -> None:
    async with running_stack(settings, tmp_path) as (_stack, client):
        await client.push(NOOP)
        await client.push(SLOW)
        run = await client.start("quick")
        info = await client.wait(run, timeout=60, poll=3600)  # no re-read: only the event can end it
        assert info.status == "succeeded"
        again = await client.wait(run.instance_id, timeout=5)  # already ended: the one read says so
        assert again.status == "succeeded"
        many = [await client.start("quick") for _ in range(20)]
        done = await client.wait_all(many, timeout=60, poll=3600)
        assert done == {r.instance_id for r in many}
        for r in many:
            assert (await client.get(r.instance_id))["status"] == "succeeded"
        slow = await client.start("slow")
        began = time.monotonic()
        with pytest.raises(TimeoutError, match=slow.instance_id):
            await client.wait(slow, timeout=1.0)
        assert time.monotonic() - began < 10
        with pytest.raises(SubscriptionError, match="group"):
            await client.subscribe_runs(group="no spaces")
        with pytest.raises(SubscriptionError, match="since"):
            await client.subscribe_runs(since="yesterday")  # type: ignore[arg-type]


async def test_only_readers_read_events_and_events_hold_no_params(settings: Settings, tmp_path: Path) -> None:
    viewer_creds = creds_for("viewer")
    publisher_creds = creds_for("publisher")
    if viewer_creds is None or publisher_creds is None:
        pytest.skip("needs the session keyring (no external NATS)")
    secret = "s3cr3t-token-value"
    async with running_stack(settings, tmp_path) as (_stack, client):
        await client.push(NOOP)
        viewer = await LegatoClient.connect(
            settings.nats_url,
            namespace=settings.namespace,
            settings=msgspec.structs.replace(settings, nats_creds=viewer_creds),
        )
        raw: list[bytes] = []
        denied: list[bytes] = []
        publisher = await nats.connect(settings.nats_url, nkeys_seed=publisher_creds)
        try:
            sub = await viewer.subscribe_runs(workflow="quick")
            steps = await viewer.subscribe_steps(workflow="quick")

            async def seen(msg: Msg) -> None:
                raw.append(msg.data)

            async def leaked(msg: Msg) -> None:
                denied.append(msg.data)

            await viewer.nc.subscribe(f"{settings.namespace}.legato.notify.>", cb=seen)
            await publisher.subscribe(f"{settings.namespace}.legato.notify.>", cb=leaked)
            await caught_up(viewer.nc)  # both subscriptions are at the server before the run starts
            await caught_up(publisher)
            run = await client.start("quick", {"token": secret})
            events = await collect(sub, {run.instance_id})
            await viewer.wait(run, timeout=30)
            assert [e.status for e in events][-1] == "succeeded"
            assert (await drain(steps, 2))[-1].status == "succeeded"
            await sub.close()
            await steps.close()
            # A viewer's JetStream grants name the notify stream only: not the work stream's items.
            topo = Topology(settings.namespace, settings.partitions)
            with pytest.raises((nats.errors.Error, asyncio.TimeoutError)):
                await asyncio.wait_for(viewer.nc.jetstream().stream_info(topo.work_stream), 10)
            # The publisher identity (signals only) may not create a consumer on the notify stream.
            with pytest.raises((nats.errors.Error, asyncio.TimeoutError)):
                await asyncio.wait_for(
                    subscribe_runs(publisher, Topology(settings.namespace, settings.partitions)), 10
                )
        finally:
            await viewer.close()
            await publisher.close()
    assert raw and not denied
    assert all(secret.encode() not in payload for payload in raw)
    assert all(b'"params"' not in payload and b"outputs" not in payload for payload in raw)
