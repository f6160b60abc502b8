"""Step attempts under executor loss and replacement, with real processes over real NATS and Postgres.

- A replaced ``last_only`` run's step that ignores SIGTERM for a while: the new run's step starts only
  after the old one ended (read from the steps' own log), and the wait is visible as a reason.
- ``kill -9`` of the executor running a step: the attempt is marked lost, with the executor named,
  within seconds (heartbeats), not after the work item's 30 s ack wait; the retry runs only after that.
- Stuck attempts are settled: the executor killed and never restarted, or the work item dead-lettered.
- A ``sleep`` step whose executor is lost midway ends about its duration after it first started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from legato.bus.connection import connect
from legato.bus.consumer import ConsumerLoop, Delivery, Poison
from legato.bus.streams import ConsumerSpec
from legato.bus.topology import Topology
from legato.client import LegatoClient
from legato.config.settings import Settings
from legato.protocol.messages import WORK_DECODER, WorkItem
from legato.store.dead_letters import PostgresDeadLetters
from legato.store.pool import create_pool
from tests.support.stack import Stack, attempts_of, executor_named, running_stack, until, wait_for

pytestmark = pytest.mark.slow

OLD_ACK_WAIT = 30.0  # the executor's ack wait: how long a lost attempt went unnoticed before heartbeats


def epoch(iso: str | None) -> float:
    assert iso is not None
    return datetime.fromisoformat(iso).timestamp()


def read_log(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def kill_step_processes(log: Path) -> None:
    """Steps run in their own session: after an executor's kill -9 they may outlive it."""
    for fields in read_log(log):
        if fields[0] == "start":
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(fields[-1]), signal.SIGKILL)


# ---------------------------------------------------------------------------------------------- 13.3

REPLACED = """
id: replaced
run_strategy: last_only
params:
  hold: {{type: int, default: 60}}
steps:
  - id: work
    type: shell
    command: 'exec sh {script}'
"""

# Ignores SIGTERM for a second (the executor's kill grace is 2 s), logging its own start and end.
STUBBORN = """
log={log}
echo "start $LEGATO_INSTANCE_ID $(date +%s.%N) $$" >> "$log"
trap 'sleep 1; echo "end $LEGATO_INSTANCE_ID $(date +%s.%N) $$" >> "$log"; exit 143' TERM
sleep "$LEGATO_PARAM_HOLD" &
wait
echo "end $LEGATO_INSTANCE_ID $(date +%s.%N) $$" >> "$log"
"""


async def test_last_only_replacement_starts_the_new_step_after_the_old_one_ended(
    settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "steps.log"
    script = tmp_path / "step.sh"
    script.write_text(STUBBORN.format(log=log))
    try:
        async with running_stack(settings, tmp_path) as (_stack, client):
            await client.push(REPLACED.format(script=script))
            old = (await client.start("replaced")).instance_id

            async def old_started() -> bool:
                return any(f[0] == "start" and f[1] == old for f in read_log(log))

            await until(old_started, 30, "the first run's step started")
            new = (await client.start("replaced", {"hold": 0})).instance_id

            reasons: list[dict[str, Any]] = []

            async def new_ended() -> bool:
                info = await client.get(new)
                if info["status"] == "queued" and info.get("reason"):
                    reasons.append(info["reason"])
                return bool(info["status"] in ("succeeded", "failed", "stopped"))

            await until(new_ended, 60, "the replacing run ended")
            info = await client.get(new)
            old_info = await client.get(old)
    finally:
        kill_step_processes(log)
    assert info["status"] == "succeeded", info
    assert old_info["status"] == "stopped"
    lines = read_log(log)
    old_start = [float(f[2]) for f in lines if f[0] == "start" and f[1] == old]
    old_end = [float(f[2]) for f in lines if f[0] == "end" and f[1] == old]
    new_start = [float(f[2]) for f in lines if f[0] == "start" and f[1] == new]
    assert len(old_start) == 1 and len(old_end) == 1 and len(new_start) == 1, lines
    # The steps' own clocks: no overlap of the replaced step and the replacing one.
    assert new_start[0] > old_end[0], lines
    # The wait was visible while it lasted, naming the run it waited for.
    waiting = [r for r in reasons if r.get("code") == "waiting_for_stop"]
    assert waiting, reasons
    assert old in waiting[0]["runs"] and old in waiting[0]["message"]
    assert any(e["event"] == "waiting_for_stop" for e in info["timeline"])
    # The old attempt's record says that the executor confirmed its end.
    old_attempts = next(s for s in old_info["steps"] if s["step_id"] == "work")["attempts"]
    old_attempt = old_attempts[-1]
    assert old_attempt["status"] == "cancelled", old_attempts
    assert "attempt over (cancelled" in old_attempt["error"]
    assert any(e["event"] == "step_stop_confirmed" for e in old_info["timeline"])


SEQUENTIAL = """
id: stopped
run_strategy: sequential
params:
  hold: {{type: int, default: 60}}
steps:
  - id: work
    type: shell
    command: 'exec sh {script}'
"""


async def test_a_stop_whose_executor_dies_before_confirming_frees_the_slot_once_it_is_known_dead(
    settings: Settings, tmp_path: Path
) -> None:
    """The executor is kill -9ed right after the stop, before the step (ignoring SIGTERM for 1 s) ended:
    nothing will ever confirm it, and the next run waits only until the executor is known dead."""
    log = tmp_path / "steps.log"
    script = tmp_path / "step.sh"
    script.write_text(STUBBORN.format(log=log))
    try:
        async with running_stack(settings, tmp_path, executors=2) as (stack, client):
            await client.push(SEQUENTIAL.format(script=script))
            first = (await client.start("stopped")).instance_id

            async def running() -> dict[str, Any] | None:
                atts = await attempts_of(client, first)
                return atts[0] if atts and atts[0]["status"] == "running" and atts[0]["executor"] else None

            attempt = await until(running, 60, "the first run's step is running")
            second = (await client.start("stopped", {"hold": 0})).instance_id
            await client.call("instance.stop", {"instance_id": first, "reason": "test"})
            stack[executor_named(stack, attempt["executor"])].kill9()
            killed_at = time.time()
            info = await wait_for(client, second, timeout=60)
            first_info = await client.get(first)
    finally:
        kill_step_processes(log)
    assert info["status"] == "succeeded", info
    started = epoch(info["started_at"])
    print(f"next run started {started - killed_at:.1f}s after the unconfirmed stop's executor died")
    # Not before the executor could be judged dead, and long before the 30 s confirmation grace.
    assert 3.0 < started - killed_at < 15.0, started - killed_at
    old = first_info["steps"][0]["attempts"][0]
    assert old["status"] == "cancelled" and "lost: no heartbeat" in old["error"], old
    assert any(e["event"] == "waiting_for_stop" for e in info["timeline"])


# ---------------------------------------------------------------------------------------------- 15.10

LONG = """
id: long
run_strategy: sequential
steps:
  - id: work
    type: shell
    command: 'sh {script}'
    retry: {{platform: {platform}}}
"""

# The first attempt runs long; a retry ends at once. Each logs "start <attempt> <time> <pid>".
LONG_STEP = """
echo "start $LEGATO_ATTEMPT $(date +%s.%N) $$" >> {log}
if [ "$LEGATO_ATTEMPT" = 1 ]; then sleep 40; fi
echo "end $LEGATO_ATTEMPT $(date +%s.%N) $$" >> {log}
"""


async def _kill_executor_of_running_attempt(stack: Stack, client: LegatoClient, run: str) -> float:
    async def running() -> dict[str, Any] | None:
        atts = await attempts_of(client, run)
        return atts[0] if atts and atts[0]["status"] == "running" and atts[0]["executor"] else None

    first = await until(running, 60, "the first attempt is running on an executor")
    victim = executor_named(stack, first["executor"])
    killed_at = time.time()
    stack[victim].kill9()
    return killed_at


async def test_executor_kill_9_marks_its_attempt_lost_within_seconds_and_only_then_retries(
    settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "steps.log"
    script = tmp_path / "step.sh"
    script.write_text(LONG_STEP.format(log=log))
    try:
        async with running_stack(settings, tmp_path, executors=2) as (stack, client):
            await client.push(LONG.format(script=script, platform=2))
            run = (await client.start("long")).instance_id
            killed_at = await _kill_executor_of_running_attempt(stack, client, run)

            async def lost() -> dict[str, Any] | None:
                atts = await attempts_of(client, run)
                return atts[0] if atts and atts[0]["status"] == "lost" else None

            first = await until(lost, OLD_ACK_WAIT + 30, "the attempt is marked lost")
            seen_lost_at = time.time()
            info = await wait_for(client, run, timeout=60)
    finally:
        kill_step_processes(log)
    assert info["status"] == "succeeded", info
    assert first["executor"] and f"executor {first['executor']} lost: no heartbeat for" in first["error"]
    assert first["failure_kind"] == "platform"
    # Detected within seconds (dead after 5 s without a heartbeat), far below the ack-wait path.
    detected = epoch(first["ended_at"]) - killed_at
    print(f"attempt marked lost {detected:.1f}s after kill -9 of its executor")
    assert seen_lost_at - killed_at < 15.0, seen_lost_at - killed_at
    assert detected < OLD_ACK_WAIT / 2
    # The retry ran only after the loss was recorded (its start from the step's own log).
    retry_start = [float(f[2]) for f in read_log(log) if f[0] == "start" and f[1] == "2"]
    assert len(retry_start) == 1, read_log(log)
    assert retry_start[0] >= epoch(first["ended_at"]), (retry_start, first)
    assert retry_start[0] - killed_at > 3.0  # not before the executor could be judged dead


# ---------------------------------------------------------------------------------------------- 13.7


async def test_attempt_of_an_executor_killed_and_never_restarted_is_settled(
    settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "steps.log"
    script = tmp_path / "step.sh"
    script.write_text(LONG_STEP.format(log=log))
    try:
        async with running_stack(settings, tmp_path, executors=1) as (stack, client):
            await client.push(LONG.format(script=script, platform=0))
            run = (await client.start("long")).instance_id
            killed_at = await _kill_executor_of_running_attempt(stack, client, run)
            # No executor left: nothing redelivers the work item, so only the reconciler can end it.
            info = await wait_for(client, run, timeout=30)
            settled_at = time.time()
    finally:
        kill_step_processes(log)
    assert info["status"] == "failed", info
    assert settled_at - killed_at < 20.0
    attempt = info["steps"][0]["attempts"][0]
    assert attempt["status"] == "lost" and "lost: no heartbeat" in attempt["error"], attempt
    assert "lost: no heartbeat" in info["error"]


QUICK = """
id: quick
run_strategy: sequential
steps:
  - id: work
    type: noop
    retry: {platform: 0}
"""


async def test_attempt_whose_work_item_was_dead_lettered_is_settled(
    settings: Settings, tmp_path: Path
) -> None:
    """An executor that cannot handle a work item dead-letters it (the real consumer loop); the attempt
    must not stay dispatched forever."""
    async with running_stack(settings, tmp_path, executors=0) as (_stack, client):
        await client.push(QUICK)
        run = (await client.start("quick")).instance_id

        async def dispatched() -> bool:
            atts = await attempts_of(client, run)
            return bool(atts and atts[0]["status"] == "dispatched")

        await until(dispatched, 30, "the attempt is dispatched")
        topo = Topology(namespace=settings.namespace, partitions=settings.partitions)
        nc = await connect(settings.nats_url, name="test-poison-executor")
        pool = await create_pool(settings.database_url, min_size=1, max_size=2)
        poisoned: list[str] = []

        async def refuse(d: Delivery[WorkItem]) -> None:
            poisoned.append(d.message.attempt_id)
            raise Poison("this executor cannot run it")

        loop: ConsumerLoop[WorkItem] = ConsumerLoop(
            nc.jetstream(),
            ConsumerSpec(
                stream=topo.work_stream,
                durable=topo.consumer_name("executor_default"),
                filter_subject=topo.work_subject("default"),
                ack_wait=30.0,
            ),
            WORK_DECODER,
            refuse,
            dead_letters=PostgresDeadLetters(pool),
        )
        task = asyncio.create_task(loop.run())
        try:
            await until(lambda: asyncio.sleep(0, bool(poisoned)), 30, "the work item was fetched")
            info = await wait_for(client, run, timeout=30)
        finally:
            await loop.shutdown()
            await asyncio.gather(task, return_exceptions=True)
            await nc.close()
            await pool.close()
    assert info["status"] == "failed", info
    attempt = info["steps"][0]["attempts"][0]
    assert attempt["status"] == "lost", attempt
    assert "work item dead-lettered" in attempt["error"] and "cannot run it" in attempt["error"]


# ---------------------------------------------------------------------------------------------- 15.11

SLEEPY = """
id: sleepy
run_strategy: sequential
steps:
  - id: work
    type: sleep
    duration: {seconds}s
"""


async def test_sleep_resumes_with_the_time_left_after_its_executor_is_lost(
    settings: Settings, tmp_path: Path
) -> None:
    seconds = 20.0
    async with running_stack(settings, tmp_path, executors=2) as (stack, client):
        await client.push(SLEEPY.format(seconds=seconds))
        run = (await client.start("sleepy")).instance_id

        async def running() -> dict[str, Any] | None:
            atts = await attempts_of(client, run)
            return atts[0] if atts and atts[0]["status"] == "running" and atts[0]["executor"] else None

        first = await until(running, 60, "the sleep is running")
        await asyncio.sleep(4.0)
        stack[executor_named(stack, first["executor"])].kill9()
        info = await wait_for(client, run, timeout=90)
    assert info["status"] == "succeeded", info
    step = info["steps"][0]
    attempts = step["attempts"]
    assert [a["status"] for a in attempts] == ["lost", "succeeded"], attempts
    began = epoch(attempts[0]["started_at"])
    ended = epoch(attempts[1]["ended_at"])
    # About `seconds` after it first started; restarting from zero would take 4 + ~5 + 20 s.
    print(f"sleep of {seconds:g}s ended {ended - began:.1f}s after it first started")
    assert seconds - 1.0 < ended - began < seconds + 5.0, (ended - began, attempts)
    retry = attempts[1]
    assert epoch(retry["ended_at"]) - epoch(retry["started_at"]) < seconds - 5.0
