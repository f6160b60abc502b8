"""Operator actions, applied by the workflow's actor like any other message.

Each action is idempotent by its ``action_id`` (recorded in ``operator_action`` in the same
transaction), records who, why and when in the run's timeline, and records why it did not apply when
it did not (the API already refused the obvious cases with a clear error).
"""

from __future__ import annotations

import asyncpg
import msgspec

from legato.bus.publisher import OutgoingMessage
from legato.core.admission import action_applies
from legato.core.progress import ForeachProgress
from legato.core.reasons import Operator, Restart, SkippedByOperator
from legato.protocol import encode
from legato.protocol.messages import ActionRequest
from legato.scheduler import repository
from legato.scheduler.engine import RunEngine
from legato.scheduler.state import (
    ActionRecord,
    InstanceState,
    StepState,
    TimelineEntry,
    now_utc,
)
from legato.scheduler.strategies import place_by_priority

# Runs a workflow-wide stop or kill ends per transaction (a workflow may have thousands queued).
WORKFLOW_ACTION_BATCH = 200


async def apply_action(conn: asyncpg.Connection, engine: RunEngine, msg: ActionRequest) -> None:
    if any(a.action_id == msg.action_id for a in engine.uow.actions):
        return
    if await repository.action_recorded(conn, msg.action_id):
        return
    result = await _apply(conn, engine, msg)
    engine.uow.actions.append(
        ActionRecord(
            msg.action_id, msg.workflow_id, msg.instance_id, msg.action, msg.actor, msg.reason, result
        )
    )


async def _apply(conn: asyncpg.Connection, engine: RunEngine, msg: ActionRequest) -> str:
    state = engine.state
    who = msg.actor or "operator"
    why = msg.reason
    if msg.action in ("stop_all", "kill_all"):
        runs = [i for i in state.instances.values() if not i.terminal]
        for inst in runs[:WORKFLOW_ACTION_BATCH]:
            _end_by_operator(engine, inst, msg.action.removesuffix("_all"), who, why)
        if len(runs) > WORKFLOW_ACTION_BATCH:
            # The rest in the next transaction: the same action again, with its own (derived) id.
            more = msgspec.structs.replace(msg, action_id=f"{msg.action_id}+")
            engine.uow.outbox.append(
                OutgoingMessage(
                    engine.topology.trigger_subject(msg.workflow_id),
                    encode(more),
                    msg_id=f"action:{more.action_id}",
                )
            )
        return f"applied to {min(len(runs), WORKFLOW_ACTION_BATCH)} runs" + (
            ", the rest follows" if len(runs) > WORKFLOW_ACTION_BATCH else ""
        )
    if msg.action == "unblock_all":
        return _unblock(engine, None, who, why)
    if msg.instance_id is None:
        return "ignored: no run given"
    if msg.action == "unblock":
        return _unblock(engine, msg.instance_id, who, why)
    active = state.instances.get(msg.instance_id)
    if msg.action in ("stop", "kill"):
        if active is None or not action_applies(msg.action, active.status):
            return "ignored: run is not queued or running"
        _end_by_operator(engine, active, msg.action, who, why)
        return "applied"
    if msg.action == "skip_step":
        if not msg.step_id:
            return "ignored: no step given"
        if active is None:
            # A failed step of an ended run: skip it and go on, as a new run number.
            loaded = await repository.load_ended_run(conn, msg.instance_id)
            st = loaded.steps.get(msg.step_id) if loaded is not None else None
            if loaded is None or st is None or st.status not in ("failed", "timed_out"):
                return "ignored: step is not failed and the run is not active"
            _mark_skipped(engine, st, who, why)
            return _restart(engine, loaded, None, who, why)
        if not action_applies("skip_step", active.status):
            return "ignored: run is not running"
        st = active.steps.get(msg.step_id)
        if st is None or st.terminal:
            return "ignored: step is not waiting, queued, running or retrying"
        engine.cancel_running_steps_of(active, [msg.step_id], "skipped", f"skipped by {who}: {why}")
        _mark_skipped(engine, st, who, why)
        engine.advance(active)
        return "applied"
    if msg.action == "restart":
        if active is not None:
            return "ignored: run is still active"
        loaded = await repository.load_ended_run(conn, msg.instance_id)
        if loaded is None:
            return "ignored: run not found"
        return _restart(engine, loaded, msg.step_id, who, why)
    return f"ignored: unknown action {msg.action}"


def _end_by_operator(engine: RunEngine, inst: InstanceState, action: str, who: str, why: str) -> None:
    reason = Operator(action=action, by=who, why=why)
    engine.finish(
        inst, "stopped", reason=reason, error=f"{action} by {who}: {why}", actor=who, force=action == "kill"
    )


def _mark_skipped(engine: RunEngine, st: StepState, who: str, why: str) -> None:
    """Skipped by an operator: its successors go on as if it had succeeded (with no outputs)."""
    st.status = "skipped"
    st.reason = SkippedByOperator(by=who, why=why)
    st.ended_at = st.ended_at or now_utc()
    engine.uow.touch_step(st)


def _unblock(engine: RunEngine, instance_id: str | None, who: str, why: str) -> str:
    row = engine.state.row
    if not row.blocked_by:
        return "ignored: workflow is not blocked"
    if instance_id is not None and instance_id != row.blocked_by:
        return f"ignored: the queue is blocked by {row.blocked_by}, not {instance_id}"
    blocker = row.blocked_by
    row.blocked_by = None
    row.blocked_since = None
    engine.uow.workflow_dirty = True
    engine.uow.unblocked_instances.append(blocker)
    engine.uow.note(TimelineEntry(blocker, "unblocked", f"queue unblocked by {who}: {why}", actor=who))
    return "applied"


def _restart(engine: RunEngine, inst: InstanceState, from_step: str | None, who: str, why: str) -> str:
    if not action_applies("restart", inst.status, step_given=from_step is not None):
        if inst.status == "succeeded":
            return "ignored: the run succeeded; give a step to restart from"
        return f"ignored: a {inst.status} run cannot be restarted"
    compiled = engine.compiled(inst.workflow_id, inst.version)
    if from_step is not None:
        try:
            compiled.step(from_step)
        except KeyError:
            return f"ignored: no step {from_step!r} in version {inst.version}"
        redo = {from_step, *engine.descendants(inst, from_step)}
    else:
        redo = {sid for sid, st in inst.steps.items() if not st.done_ok}
        # Steps downstream of a redone step must be decided again too.
        for sid in list(redo):
            redo.update(engine.descendants(inst, sid))
    for sid in redo:
        st = inst.steps.get(sid)
        if st is not None:
            keep = from_step is None and isinstance(st.progress, ForeachProgress)
            if not keep:
                st.progress = None  # a foreach restarted on its own re-runs only its failed iterations
            st.status = "pending"
            st.retries_error = st.retries_platform = st.retries_timeout = 0
            st.failure_ignored = False
            st.started_at = None  # this run's first start (a resumed sleep counts from it)
            st.reason = Restart(run=inst.run_number + 1)
            engine.uow.touch_step(st)
    inst.run_number += 1
    inst.error = None
    inst.outputs = None
    inst.ended_at = None
    inst.unblocked = False
    engine.note(
        inst,
        "restart_requested",
        f"restart as run {inst.run_number} by {who}: {why}"
        + (f" (from step {from_step})" if from_step else ""),
        actor=who,
    )
    engine.restart(inst)
    place_by_priority(engine, inst, restarted=True)
    return "applied"
