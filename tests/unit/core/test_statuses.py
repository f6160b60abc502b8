"""The one home of run, step and attempt statuses: members are their wire/database strings."""

import msgspec

from legato.core.statuses import (
    ACTIVE_INSTANCE,
    FAILED_INSTANCE,
    FAILED_STEP,
    LIVE_ATTEMPT,
    TERMINAL_INSTANCE,
    TERMINAL_STEP,
    AttemptStatus,
    InstanceStatus,
    StepStatus,
)


def test_a_status_is_the_text_stored_and_sent() -> None:
    assert InstanceStatus.TIMED_OUT == "timed_out"
    assert f"{StepStatus.WAITING}" == "waiting"
    assert msgspec.json.encode(AttemptStatus.LOST) == b'"lost"'
    assert msgspec.json.decode(b'"queued"', type=InstanceStatus) is InstanceStatus.QUEUED
    assert "running" in ACTIVE_INSTANCE and "dispatched" in LIVE_ATTEMPT


def test_a_run_is_either_active_or_terminal_never_both() -> None:
    assert not set(ACTIVE_INSTANCE) & set(TERMINAL_INSTANCE)
    assert set(FAILED_INSTANCE) < set(TERMINAL_INSTANCE)
    stored = set(InstanceStatus) - {InstanceStatus.PENDING, InstanceStatus.CREATED}
    assert stored == set(ACTIVE_INSTANCE) | set(TERMINAL_INSTANCE)


def test_step_terminal_sets_agree_with_the_run_ones() -> None:
    assert set(FAILED_STEP) < set(TERMINAL_STEP)
    assert {str(s) for s in TERMINAL_STEP} == {str(s) for s in TERMINAL_INSTANCE}
    assert StepStatus.RETRYING not in TERMINAL_STEP and StepStatus.WAITING not in TERMINAL_STEP
