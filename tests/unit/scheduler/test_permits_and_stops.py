"""The permit rules (oldest waiter first, per step_concurrency and per tag) and stops awaiting confirmation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from legato.core.reasons import WaitingForPermit, WaitingForStepConcurrency
from legato.scheduler import permits, stops
from legato.scheduler.state import (
    InstanceState,
    PermitGrant,
    PermitRelease,
    StepState,
    StoppingAttempt,
    StopSettled,
    TagState,
    TagWaiterRemove,
    UnitOfWork,
    WorkflowRow,
    WorkflowState,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def workflow() -> WorkflowState:
    row = WorkflowRow(
        id="wf",
        active=True,
        active_version=1,
        run_strategy="parallel",
        max_concurrency=10,
        paused=False,
        blocked_by=None,
        blocked_since=None,
        running_count=0,
        queued_count=0,
    )
    return WorkflowState(row=row)


def run(state: WorkflowState, run_id: str, *step_ids: str) -> InstanceState:
    inst = InstanceState(
        id=run_id,
        workflow_id="wf",
        version=1,
        trigger_key=run_id,
        trigger={},
        status="running",
        params={},
        run_params={},
        created_at=T0,
    )
    for sid in step_ids:
        inst.steps[sid] = StepState(instance_id=run_id, step_id=sid, status="queued")
    state.instances[run_id] = inst
    return inst


def test_step_concurrency_counts_running_steps_and_older_waiters() -> None:
    state = workflow()
    inst = run(state, "r1", "a", "b")
    a, b = inst.steps["a"], inst.steps["b"]
    assert permits.blocking_limit(state, inst, a, [], 2) is None
    state.leaf_active = 1
    uow = UnitOfWork()
    # An older step already waits for a step slot: the newer one must not jump ahead of it.
    a.waiting_since = T0
    assert permits.wait(state, uow, inst, a, WaitingForStepConcurrency(limit=2, in_use=1, message="m"))
    b.waiting_since = T0 + timedelta(seconds=1)
    reason = permits.blocking_limit(state, inst, b, [], 2)
    assert isinstance(reason, WaitingForStepConcurrency)
    assert reason.in_use == 1 and reason.limit == 2
    assert permits.blocking_limit(state, inst, a, [], 2) is None  # the oldest gets the free slot


def test_tag_permits_wait_in_age_order_and_release_wakes_other_workflows() -> None:
    state = workflow()
    state.tags["db"] = TagState(tag="db", limit=1, in_use=0)
    inst = run(state, "r1", "a", "b")
    a, b = inst.steps["a"], inst.steps["b"]
    uow = UnitOfWork()
    assert permits.blocking_limit(state, inst, a, ["db"], None) is None
    permits.hold(state, uow, inst, a, ["db"], "att-a")
    assert state.tags["db"].in_use == 1 and state.leaf_active == 1
    assert uow.permits_add == [PermitGrant("db", "att-a", "wf", "r1", "a")]
    reason = permits.blocking_limit(state, inst, b, ["db"], None)
    assert (
        isinstance(reason, WaitingForPermit)
        and reason.tag == "db"
        and reason.message == "waiting for tag permit db (1/1 held)"
    )
    assert permits.wait(state, uow, inst, b, reason)
    assert not permits.wait(state, uow, inst, b, reason)  # already waiting for the same: not new
    state.tags["db"].waiters.insert(0, (T0 - timedelta(seconds=5), "other-wf", "r9", "x"))
    permits.release(state, uow, inst, a, ["db"], attempt_id="att-a")
    assert state.tags["db"].in_use == 0 and state.leaf_active == 0
    assert uow.permits_del == [PermitRelease("db", "att-a")] and uow.nudges == {"other-wf"}
    permits.leave_waiters(state, uow, inst, b, ["db"])
    assert [w[2] for w in state.tags["db"].waiters] == ["r9"]
    assert uow.waiters_del == [TagWaiterRemove("db", "r1", "b")]


def test_stops_awaiting_confirmation_name_the_first_deadline_and_settle_once() -> None:
    state = workflow()
    assert stops.wait_reason(state) is None
    late = StoppingAttempt("att-2", "r2", "s", T0 + timedelta(seconds=30))
    early = StoppingAttempt("att-1", "r1", "s", T0 + timedelta(seconds=10))
    state.stopping = {late.attempt_id: late, early.attempt_id: early}
    reason = stops.wait_reason(state)
    assert reason is not None
    assert reason.runs == ["r1", "r2"] and reason.attempts == ["att-1", "att-2"]
    assert reason.message.startswith("waiting for run r1 (step s, attempt att-1) to confirm it stopped")
    uow = UnitOfWork()
    stops.settle(state, uow, early, None, "tail", "confirmed")
    assert list(state.stopping) == ["att-2"]
    assert uow.stops_settled == [StopSettled("att-1", None, "tail", "confirmed")]
    assert [(e.instance_id, e.event) for e in uow.timeline] == [("r1", "step_stop_confirmed")]
