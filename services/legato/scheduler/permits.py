"""Concurrency permits: a step's slot under ``step_concurrency`` and under each named tag it uses.

The rules, over one workflow's state and the batch's unit of work: who must wait (oldest waiter
first), joining and leaving the tags' waiter lists, and holding and freeing slots. The engine decides
when to ask, and notes and traces the waits.
"""

from __future__ import annotations

from collections.abc import Sequence

from legato.core.reasons import WaitingForPermit, WaitingForStepConcurrency
from legato.scheduler.state import (
    InstanceState,
    PermitGrant,
    PermitRelease,
    StepState,
    TagWaiterAdd,
    TagWaiterRemove,
    UnitOfWork,
    WorkflowState,
    now_utc,
)


def blocking_limit(
    state: WorkflowState,
    inst: InstanceState,
    st: StepState,
    tags: Sequence[str],
    step_concurrency: int | None,
) -> WaitingForStepConcurrency | WaitingForPermit | None:
    """Why the step may not take its slot yet (the first full limit, counting older waiters), or None."""
    since = st.waiting_since or now_utc()
    if step_concurrency:
        older = sum(
            1
            for w_since, _i, w in state.waiting_steps()
            if w is not st and w_since < since and isinstance(w.reason, WaitingForStepConcurrency)
        )
        if state.leaf_active + older >= step_concurrency:
            return WaitingForStepConcurrency(
                limit=step_concurrency,
                in_use=state.leaf_active,
                message=f"waiting for a step slot: step_concurrency {state.leaf_active}/{step_concurrency} in use",
            )
    for tag in tags:
        ts = state.tags.get(tag)
        if ts is None or ts.limit is None:
            continue
        older = sum(
            1
            for w_since, _wf, w_inst, w_step in ts.waiters
            if w_since < since and not (w_inst == inst.id and w_step == st.step_id)
        )
        if ts.in_use + older >= ts.limit:
            return WaitingForPermit(
                tag=tag,
                limit=ts.limit,
                in_use=ts.in_use,
                message=f"waiting for tag permit {tag} ({ts.in_use}/{ts.limit} held)",
            )
    return None


def leave_waiters(
    state: WorkflowState, uow: UnitOfWork, inst: InstanceState, st: StepState, tags: Sequence[str]
) -> None:
    """The step no longer waits for these tags (it took its slot, or it went away)."""
    for tag in tags:
        ts = state.tags.get(tag)
        if ts is not None:
            before = len(ts.waiters)
            ts.waiters = [w for w in ts.waiters if not (w[2] == inst.id and w[3] == st.step_id)]
            if len(ts.waiters) != before:
                uow.waiters_del.append(TagWaiterRemove(tag, inst.id, st.step_id))


def wait(
    state: WorkflowState,
    uow: UnitOfWork,
    inst: InstanceState,
    st: StepState,
    reason: WaitingForStepConcurrency | WaitingForPermit,
) -> bool:
    """The step waits for ``reason`` (joining the tag's waiters, in age order); True if it newly does."""
    first = st.status != "waiting" or type(st.reason) is not type(reason)
    if st.waiting_since is None:
        st.waiting_since = now_utc()
    st.status = "waiting"
    st.reason = reason
    uow.touch_step(st)
    if isinstance(reason, WaitingForPermit):
        tag = reason.tag
        ts = state.tags[tag]
        if not any(w[2] == inst.id and w[3] == st.step_id for w in ts.waiters):
            ts.waiters.append((st.waiting_since, inst.workflow_id, inst.id, st.step_id))
            ts.waiters.sort(key=lambda w: w[0])
            uow.waiters_add.append(TagWaiterAdd(tag, inst.workflow_id, inst.id, st.step_id, st.waiting_since))
    return first


def hold(
    state: WorkflowState,
    uow: UnitOfWork,
    inst: InstanceState,
    st: StepState,
    tags: Sequence[str],
    attempt_id: str,
) -> None:
    """The attempt was dispatched: it holds a step slot and a permit of each limited tag."""
    state.leaf_active += 1
    for tag in tags:
        ts = state.tags.get(tag)
        if ts is not None and ts.limit is not None:
            ts.in_use += 1
            uow.permits_add.append(PermitGrant(tag, attempt_id, inst.workflow_id, inst.id, st.step_id))


def release(
    state: WorkflowState,
    uow: UnitOfWork,
    inst: InstanceState,
    st: StepState,
    tags: Sequence[str],
    *,
    attempt_id: str | None,
) -> None:
    """The attempt ended (or, without ``attempt_id``, the waiting step went away): free what it held,
    and wake the oldest waiters of other workflows (this workflow's are retried after each message)."""
    for tag in tags:
        ts = state.tags.get(tag)
        if ts is None:
            continue
        if attempt_id is not None and ts.limit is not None:
            ts.in_use = max(0, ts.in_use - 1)
            uow.permits_del.append(PermitRelease(tag, attempt_id))
        if attempt_id is None:
            before = len(ts.waiters)
            ts.waiters = [w for w in ts.waiters if not (w[2] == inst.id and w[3] == st.step_id)]
            if len(ts.waiters) != before:
                uow.waiters_del.append(TagWaiterRemove(tag, inst.id, st.step_id))
        for _since, wf, _i, _s in ts.waiters[: max(1, (ts.limit or 0) - ts.in_use)]:
            if wf != inst.workflow_id:
                uow.nudges.add(wf)
    if attempt_id is not None:
        state.leaf_active = max(0, state.leaf_active - 1)
