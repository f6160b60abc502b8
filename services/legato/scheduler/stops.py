"""Attempts cancelled with their run that still hold its strategy slot until their executor confirms
they stopped (or the grace period ends): why the next run waits, and settling a confirmed stop."""

from __future__ import annotations

from datetime import datetime

from legato.core.reasons import WaitingForStop
from legato.scheduler.state import StoppingAttempt, StopSettled, TimelineEntry, UnitOfWork, WorkflowState

# How long a stopped run's attempt may take to confirm that it stopped before its strategy slot is given
# to the next run anyway (the executor's kill grace, SIGTERM -> SIGKILL, is 2 s by default). A dead
# executor is detected within seconds (``liveness.py``) and releases the slot at once.
STOP_CONFIRM_GRACE = 30.0


def wait_reason(state: WorkflowState) -> WaitingForStop | None:
    """Why the next run waits although a slot looks free: stopped runs not confirmed stopped yet."""
    if not state.stopping:
        return None
    first = min(state.stopping.values(), key=lambda s: s.until)
    return WaitingForStop(
        runs=state.stopping_runs(),
        attempts=sorted(state.stopping),
        until=first.until.isoformat(),
        message=(
            f"waiting for run {first.instance_id} (step {first.step_id}, attempt {first.attempt_id}) "
            f"to confirm it stopped, at most until {first.until.isoformat(timespec='seconds')}"
        ),
    )


def settle(
    state: WorkflowState,
    uow: UnitOfWork,
    stopping: StoppingAttempt,
    ended_at: datetime | None,
    log_tail: str | None,
    why: str,
) -> None:
    """The stopping attempt is known to be over (or given up on): its run's slot is free again."""
    state.stopping.pop(stopping.attempt_id, None)
    uow.stops_settled.append(StopSettled(stopping.attempt_id, ended_at, log_tail, why[:4000]))
    uow.cancel_timer(stopping.instance_id, "stop_grace", stopping.step_id)
    uow.note(
        TimelineEntry(
            stopping.instance_id,
            "step_stop_confirmed",
            f"step {stopping.step_id}: {why}",
            step_id=stopping.step_id,
            details={"attempt_id": stopping.attempt_id},
        )
    )
