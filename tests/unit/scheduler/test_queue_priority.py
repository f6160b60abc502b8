"""Queue priority in the scheduler's own strategy code (driven in memory): live runs start before
queued backfill runs of the default ``low`` priority, within the strategy's limit, FIFO among equals;
a ``high`` backfill goes first; a restarted backfill run goes behind queued live runs."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from legato.core.admission import queue_priority
from legato.protocol.messages import StartRun, TriggerInfo
from legato.scheduler.strategies import admit_new
from tests.support.strategy_engine import EngineDriver


class PriorityDriver(EngineDriver):
    """The in-memory engine, with runs started by a backfill (of a given priority) or live."""

    def started(self, name: str, priority: str | None = None) -> None:
        engine = self._engine()
        if priority is None:
            trigger = TriggerInfo(kind="api")
        else:
            trigger = TriggerInfo(kind="backfill", id="bf-1", details={"priority": priority})
        msg = StartRun(
            workflow_id="wf",
            trigger_key=f"key:{name}",
            instance_id=name,
            trigger=trigger,
            params={},
            requested_at=datetime.now(UTC).timestamp(),
        )
        inst = engine.new_instance(msg, 1, "created")
        assert engine.resolve_params(inst)
        admit_new(engine, inst)
        self._commit(engine)

    def running(self) -> set[str]:
        return {i.id for i in self.state.instances.values() if i.status == "running"}

    def start_order(self) -> list[str]:
        return [run for run, event in self.timeline if event == "started"]


def test_queue_priority_of_trigger_info() -> None:
    assert queue_priority({"kind": "api"}) == 0
    assert queue_priority({"kind": "cron", "priority": "high"}) == 0  # only backfills carry one
    assert queue_priority({"kind": "backfill"}) == -1  # the default: low
    assert queue_priority({"kind": "backfill", "priority": "normal"}) == 0
    assert queue_priority({"kind": "backfill", "priority": "high"}) == 1


@pytest.mark.parametrize(
    ("strategy", "limit"), [("strict_sequential", 1), ("sequential", 1), ("parallel", 2)]
)
def test_live_runs_start_before_queued_low_backfill_runs(strategy: str, limit: int) -> None:
    d = PriorityDriver(strategy, limit)
    for i in range(4):
        d.started(f"bf{i}", "low")
    assert len(d.running()) == limit
    d.started("live1")
    d.started("live2")
    assert list(d.state.queue)[:2] == ["live1", "live2"]
    while d.running():
        for name in sorted(d.running()):
            d.finish(name, True)
            assert len(d.running()) <= limit  # the strategy's limit holds throughout
    first = [f"bf{i}" for i in range(limit)]
    assert d.start_order() == [*first, "live1", "live2", *[f"bf{i}" for i in range(limit, 4)]]


def test_normal_backfill_is_fifo_with_live_runs_and_high_goes_first() -> None:
    d = PriorityDriver("sequential", 1)
    d.started("bf-low", "low")  # runs at once: nothing queued
    d.started("bf-normal", "normal")
    d.started("live")
    d.started("bf-high", "high")
    d.started("bf-low2", "low")
    assert list(d.state.queue) == ["bf-high", "bf-normal", "live", "bf-low2"]
    while d.running():
        d.finish(next(iter(d.running())), True)
    assert d.start_order() == ["bf-low", "bf-high", "bf-normal", "live", "bf-low2"]


def test_restarted_backfill_run_goes_behind_queued_live_runs() -> None:
    d = PriorityDriver("sequential", 1)
    d.started("bf", "low")
    d.started("live0")
    d.finish("bf", False)  # live0 starts
    d.started("live1")
    d.restart("bf")  # a restarted run goes first, but only among its priority
    assert list(d.state.queue) == ["live1", "bf"]
    d.restart("live0")  # not applicable: still running
    d.finish("live0", False)  # live1 starts, not the restarted backfill run
    assert d.running() == {"live1"}
    d.started("live2")
    d.restart("live0")  # a restarted live run goes to the very front
    assert list(d.state.queue) == ["live0", "live2", "bf"]


def test_change_to_serial_latest_only_keeps_the_newest_arrival_whatever_its_priority() -> None:
    d = PriorityDriver("parallel", 1)
    d.started("running")
    d.started("live", None)
    d.started("bf-low", "low")  # the newest arrival, last in the queue
    d.started("live2", None)  # newer still, but placed before bf-low
    assert list(d.state.queue) == ["live", "live2", "bf-low"]
    d.change_strategy("serial_latest_only", 1)
    assert list(d.state.queue) == ["live2"]
    assert d.statuses()["bf-low"] == d.statuses()["live"] == "stopped"
