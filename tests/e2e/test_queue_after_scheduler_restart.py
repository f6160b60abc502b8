"""A restarted run goes to the front of the queue, and stays there when the scheduler restarts and
rebuilds the queue from Postgres (found by the real strategy machine: the rebuilt queue was in arrival
order, so the older queued run started first)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from legato.config.settings import Settings
from tests.support.strategy_model import StrategyModel
from tests.support.strategy_real import RealSystem, RealWorld


@pytest.fixture
def world(settings: Settings, tmp_path: Path) -> Iterator[RealWorld]:
    with RealWorld(settings, tmp_path) as w:
        yield w


def test_restarted_runs_keep_their_place_at_the_front_across_a_scheduler_restart(world: RealWorld) -> None:
    model = StrategyModel("sequential")
    s = RealSystem(world, "front", "sequential", 1)
    for name in ("a", "b", "c", "d"):
        model.trigger(name)
        s.trigger(name)
    s.settle(model.statuses())
    for name in ("c", "d"):  # queued runs stopped, then restarted: d last, so d is first
        model.stop(name)
        s.stop(name)
    s.settle(model.statuses())
    for name in ("c", "d"):
        model.restart(name)
        s.restart(name)
        s.settle(model.statuses())
    s.settle(model.statuses())
    s.restart_scheduler()
    model.finish("a", ok=True)
    s.finish("a", ok=True)
    expected = model.statuses()
    assert expected == {"a": "succeeded", "b": "queued", "c": "queued", "d": "running"}
    s.settle(expected)
    assert s.statuses() == expected
    model.finish("d", ok=True)
    s.finish("d", ok=True)
    s.settle(model.statuses())
    assert (
        s.statuses()
        == model.statuses()
        == {"a": "succeeded", "b": "queued", "c": "running", "d": "succeeded"}
    )
