"""Stopping what runs: cancelling attempts, telling executors, and stops awaiting confirmation."""

from __future__ import annotations

from datetime import timedelta

from legato.bus.publisher import OutgoingMessage
from legato.core.reasons import Cancelled, WaitingForStop
from legato.protocol import encode
from legato.protocol.messages import CancelAttempt
from legato.scheduler import run_spans, stops
from legato.scheduler.engine.base import EngineBase
from legato.scheduler.state import AttemptState, InstanceState, StoppingAttempt, now_utc


class Cancellation(EngineBase):
    """Stopping what runs: cancelling attempts, telling executors, and stops awaiting confirmation."""

    def cancel_running_steps(
        self, inst: InstanceState, status: str, why: str, *, force: bool = False, hold: bool = False
    ) -> list[AttemptState]:
        """Cancel every attempt still queued or running (executors are told on the control subject).

        With ``hold``, the cancelled attempts keep the run's strategy slot until their executors
        confirm they stopped (returned, to arm their grace timers)."""
        return self.cancel_running_steps_of(inst, list(inst.steps), status, why, force=force, hold=hold)

    def cancel_running_steps_of(
        self,
        inst: InstanceState,
        step_ids: list[str],
        status: str,
        why: str,
        *,
        force: bool = False,
        hold: bool = False,
    ) -> list[AttemptState]:
        stopping: list[AttemptState] = []
        for sid in step_ids:
            st = inst.steps.get(sid)
            if st is not None and st.status in ("queued", "running", "retrying", "waiting"):
                at = inst.attempts.get(st.current_attempt_id or "")
                if at is not None and at.status in ("dispatched", "running"):
                    self._attempt_left_queue(at)
                    at.status = "cancelled"
                    at.ended_at = now_utc()
                    at.error = why
                    if hold:
                        at.stopping_until = at.ended_at + timedelta(seconds=stops.STOP_CONFIRM_GRACE)
                        self.state.stopping[at.id] = StoppingAttempt(
                            at.id, inst.id, at.step_id, at.stopping_until
                        )
                        stopping.append(at)
                    self.uow.touch_attempt(at)
                    self.send_cancel(at.id, why, force=force)
                    self.release_permits(inst, st, attempt_id=at.id)
                    run_spans.attempt_ended(self.uow, inst, st, at, self.graph(inst).step(st.step_id).type)
                elif st.status == "waiting":
                    self.release_permits(inst, st, attempt_id=None)
                elif st.progress is not None and st.status == "running":
                    st.status = status  # first, so the children's ends are not joined back
                    self.stop_children(inst, st, why)
                self.uow.cancel_timer(inst.id, None, st.step_id)
                st.status = status
                st.ended_at = now_utc()
                st.reason = Cancelled(why=why)
                self.uow.touch_step(st)
                self.note(inst, f"step_{status}", f"step {st.step_id} {status}: {why}", step_id=st.step_id)
        return stopping

    def stop_wait_reason(self) -> WaitingForStop | None:
        """Why the next run waits although a slot looks free (``stops.py``)."""
        return stops.wait_reason(self.state)

    def on_stop_grace_timer(self, attempt_id: str | None) -> None:
        stopping = self.state.stopping.get(attempt_id or "")
        if stopping is None:
            return
        stops.settle(
            self.state,
            self.uow,
            stopping,
            None,
            None,
            f"cancelled with its run; no confirmation that it stopped within {stops.STOP_CONFIRM_GRACE:g}s: "
            "its slot is given to the next run",
        )

    def send_cancel(self, attempt_id: str, reason: str, *, force: bool = False) -> None:
        self.uow.outbox.append(
            OutgoingMessage(
                self.topology.cancel_subject(attempt_id),
                encode(CancelAttempt(attempt_id=attempt_id, reason=reason, force=force)),
                core=True,
            )
        )
