"""The liveness verdict: who is blamed for silence, and when (the real class, a controlled clock)."""

from __future__ import annotations

from typing import Any

import pytest

from legato.bus.topology import Topology
from legato.protocol.messages import ExecutorHeartbeat, encode
from legato.scheduler import liveness
from legato.scheduler.liveness import ExecutorWatch


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Beat:
    def __init__(self, data: bytes) -> None:
        self.data = data


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(liveness.time, "monotonic", c)
    return c


def watch() -> ExecutorWatch:
    none: Any = None
    return ExecutorWatch(none, none, none, Topology(), owned=lambda: [0], dead_after=5.0, sweep_every=1.0)


async def beat(w: ExecutorWatch, executor: str, boot: str, *attempts: str) -> None:
    msg: Any = Beat(encode(ExecutorHeartbeat(executor=executor, boot=boot, attempts=list(attempts))))
    await w._on_heartbeat(msg)


def run_for(w: ExecutorWatch, clock: Clock, seconds: float, *, connected: bool = True) -> None:
    """The sweep loop ticking every second, as it does."""
    end = clock.now + seconds
    while clock.now < end:
        clock.now += 1.0
        w.observe(clock.now, connected)


async def test_silent_executor_is_blamed_after_dead_after_and_not_before(clock: Clock) -> None:
    w = watch()
    run_for(w, clock, 6)
    await beat(w, "ex1", "b1", "a1")
    run_for(w, clock, 4)
    assert w.verdict("a1", "ex1", None) is None
    run_for(w, clock, 2)
    why = w.verdict("a1", "ex1", None)
    assert why is not None and why.startswith("executor ex1 lost: no heartbeat for 6 s")


async def test_a_live_executor_that_stopped_listing_an_attempt_is_not_blamed(clock: Clock) -> None:
    w = watch()
    run_for(w, clock, 6)
    await beat(w, "ex1", "b1", "a1")
    for _ in range(10):
        run_for(w, clock, 1)
        await beat(w, "ex1", "b1")  # finished; its result may still be on its way
    assert w.verdict("a1", "ex1", None) is None


async def test_a_restarted_executor_does_not_cover_its_previous_boot(clock: Clock) -> None:
    w = watch()
    run_for(w, clock, 6)
    await beat(w, "ex1", "b1", "a1")
    for _ in range(7):
        run_for(w, clock, 1)
        await beat(w, "ex1", "b2")  # same id, new process: a1 is not running anywhere
    assert (w.verdict("a1", "ex1", None) or "").startswith("executor ex1 lost")


async def test_a_paused_or_disconnected_scheduler_blames_nobody_at_once(clock: Clock) -> None:
    w = watch()
    run_for(w, clock, 6)
    await beat(w, "ex1", "b1", "a1")
    clock.now += 30  # this process was stopped (SIGSTOP): the heartbeats are still unread
    assert not w.observe(clock.now, True)
    assert w.verdict("a1", "ex1", None) is None
    run_for(w, clock, 3, connected=False)
    run_for(w, clock, 3)
    assert w.verdict("a1", "ex1", None) is None
    run_for(w, clock, 4)
    # Back and watching for more than dead_after: now silence counts again.
    assert (w.verdict("a1", "ex1", None) or "").startswith("executor ex1 lost: no heartbeat for 6 s")


async def test_executor_never_heard_is_blamed_only_after_watching_long_enough(clock: Clock) -> None:
    w = watch()
    run_for(w, clock, 3)
    assert w.verdict("a9", "gone", None) is None
    run_for(w, clock, 4)
    assert (w.verdict("a9", "gone", None) or "").startswith("executor gone lost")


async def test_dead_lettered_work_item_settles_unless_a_live_executor_runs_it(clock: Clock) -> None:
    w = watch()
    run_for(w, clock, 6)
    assert w.verdict("a2", None, "poison") == "work item dead-lettered: poison"
    await beat(w, "ex1", "b1", "a2")
    assert w.verdict("a2", None, "poison") is None
    assert w.verdict("a3", None, None) is None  # waiting in its queue: nobody to blame
