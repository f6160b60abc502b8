"""The run-queue rules shared by the scheduler (which enforces them) and the trigger (which explains them)."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from legato.core.admission import (
    ACTION_APPLIES_TO,
    QueueState,
    action_applies,
    action_statuses,
    concurrency_limit,
    queue_state,
    running_limit,
    step_only_statuses,
)
from legato.core.model import RUN_STRATEGIES

SERIAL = [s for s in RUN_STRATEGIES if s != "parallel"]


@pytest.mark.parametrize("strategy", SERIAL)
def test_every_strategy_but_parallel_runs_at_most_one(strategy: str) -> None:
    assert concurrency_limit(strategy, 1) == 1
    assert concurrency_limit(strategy, 20) == 1
    assert concurrency_limit(strategy, 0) == 0  # a zero limit stays zero: it never grows to one


def test_parallel_runs_its_max_concurrency() -> None:
    assert concurrency_limit("parallel", 20) == 20
    assert concurrency_limit("parallel", 0) == 0


@given(st.sampled_from(RUN_STRATEGIES), st.integers(0, 1000))
def test_a_pause_stops_every_strategy(strategy: str, limit: int) -> None:
    assert running_limit(strategy, limit, paused=True) == 0
    assert running_limit(strategy, limit, paused=False) == concurrency_limit(strategy, limit)
    assert queue_state(strategy, limit, True, "blocker") is QueueState.PAUSED


def test_parallel_with_limit_zero_is_paused() -> None:
    assert queue_state("parallel", 0, False, None) is QueueState.PAUSED
    assert queue_state("parallel", 1, False, None) is QueueState.QUEUED


def test_only_strict_sequential_blocks() -> None:
    assert queue_state("strict_sequential", 1, False, "run-1") is QueueState.BLOCKED
    assert queue_state("strict_sequential", 1, False, None) is QueueState.QUEUED
    for strategy in RUN_STRATEGIES:
        if strategy != "strict_sequential":
            assert queue_state(strategy, 1, False, "run-1") is QueueState.QUEUED


@given(st.sampled_from(RUN_STRATEGIES), st.integers(0, 1000), st.booleans(), st.none() | st.just("run-1"))
@example(
    "strict_sequential", 0, False, "run-1"
)  # a limit of 0 pauses even a blocked queue (found by hypothesis)
def test_runs_start_exactly_when_the_queue_is_open_and_the_limit_has_room(
    strategy: str, limit: int, paused: bool, blocked_by: str | None
) -> None:
    state = queue_state(strategy, limit, paused, blocked_by)
    if running_limit(strategy, limit, paused) == 0:
        assert state is QueueState.PAUSED
    else:
        assert state in (QueueState.QUEUED, QueueState.BLOCKED)


def test_actions_apply_to_their_statuses() -> None:
    for action in ("stop", "kill"):
        assert [s for s in ("queued", "running", "succeeded", "failed") if action_applies(action, s)] == [
            "queued",
            "running",
        ]
    assert action_statuses("restart") == ("failed", "timed_out", "stopped")
    assert not action_applies("restart", "succeeded")
    assert action_applies("restart", "succeeded", step_given=True)
    assert not action_applies("restart", "running", step_given=True)
    assert step_only_statuses("restart") == ("succeeded",)
    assert step_only_statuses("stop") == step_only_statuses("skip_step") == ()
    assert action_statuses("stop", step_given=True) == action_statuses("stop")
    assert action_statuses("skip_step") == ("running", "failed", "timed_out")
    assert not action_applies("skip_step", "queued")
    assert set(ACTION_APPLIES_TO) == {"stop", "kill", "restart", "skip_step"}


def test_an_unknown_action_is_a_programming_error() -> None:
    with pytest.raises(KeyError):
        action_applies("pause", "running")
