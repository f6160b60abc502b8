"""Workflow-wide actions end runs in bounded transactions and hand the rest to a follow-up message."""

from __future__ import annotations

from typing import Any, cast

import msgspec
import pytest

from legato.core.reasons import WaitingForStop
from legato.protocol.messages import ActionRequest
from legato.scheduler import actions
from legato.scheduler.strategies import admit
from tests.support.strategy_engine import EngineDriver
from tests.support.strategy_model import StrategyModel, check_history


async def test_workflow_stop_applies_in_batches_and_continues_with_a_derived_id() -> None:
    driver = EngineDriver("parallel", 0)  # paused: every run stays queued
    n = actions.WORKFLOW_ACTION_BATCH + 50
    for i in range(n):
        driver.trigger(f"r{i}")
    assert len(driver.state.queue) == n
    engine = driver._engine()
    msg = ActionRequest(
        action_id="act1", workflow_id="wf", action="stop_all", reason="maintenance", actor="ops"
    )
    result = await actions._apply(cast(Any, None), engine, msg)
    admit(engine)
    assert result == f"applied to {actions.WORKFLOW_ACTION_BATCH} runs, the rest follows"
    assert len(driver.state.queue) == 50
    [follow] = engine.uow.outbox
    again = msgspec.json.decode(follow.payload)
    assert again["action_id"] == "act1+" and again["action"] == "stop_all" and follow.msg_id == "action:act1+"

    engine = driver._engine()
    result = await actions._apply(cast(Any, None), engine, msgspec.structs.replace(msg, action_id="act1+"))
    assert result == "applied to 50 runs" and not engine.uow.outbox and not driver.state.queue


@pytest.mark.parametrize(
    ("strategy", "after_timeout"),
    [
        ("strict_sequential", {"a": "timed_out", "b": "queued"}),
        ("sequential", {"a": "timed_out", "b": "running"}),
    ],
)
def test_a_run_timeout_ends_the_run_through_admit_like_a_failure(
    strategy: str, after_timeout: dict[str, str]
) -> None:
    driver = EngineDriver(strategy, 1)
    for name in ("a", "b"):
        driver.trigger(name)
    driver.time_out("a")
    # a's step was still running: its slot stays taken until the executor confirms the step stopped.
    assert driver.statuses() == {"a": "timed_out", "b": "queued"}
    if strategy == "sequential":
        assert isinstance(driver.state.instances["b"].reason, WaitingForStop)
    driver.confirm_stop("a")
    assert driver.statuses() == after_timeout
    if strategy == "strict_sequential":
        assert driver.state.row.blocked_by == "a"
        driver.unblock()
        assert driver.statuses() == {"a": "timed_out", "b": "running"}


def test_restarting_the_blocker_after_a_switch_from_parallel_waits_for_a_slot() -> None:
    """parallel(2) -> strict_sequential while two run: the failed one's restart must not make it two."""
    model = StrategyModel("parallel", 2)
    driver = EngineDriver("parallel", 2)
    for name in ("a", "b", "c"):
        model.trigger(name)
        driver.trigger(name)
    for system in (model, driver):
        system.change_strategy("strict_sequential", 1)
        system.finish("a", ok=False)
        system.restart("a")
    assert driver.statuses() == model.statuses() == {"a": "queued", "b": "running", "c": "queued"}
    check_history(driver.events(), strategy="parallel", limit=2, changes=[(5, "strict_sequential", 1)])
    for system in (model, driver):
        system.finish("b", ok=True)
    assert driver.statuses() == model.statuses() == {"a": "running", "b": "succeeded", "c": "queued"}


def test_the_restarted_blocker_starts_even_when_another_restarted_run_queued_ahead_of_it() -> None:
    model = StrategyModel("parallel", 2)
    driver = EngineDriver("parallel", 2)
    for system in (model, driver):
        for name in ("a", "b", "c"):
            system.trigger(name)
        system.change_strategy("strict_sequential", 1)
        system.finish("a", ok=False)
        system.stop("c")
        system.restart("a")
        system.restart("c")  # goes to the front, ahead of the blocker
        system.finish("b", ok=True)
    assert driver.statuses() == model.statuses() == {"a": "running", "b": "succeeded", "c": "queued"}
