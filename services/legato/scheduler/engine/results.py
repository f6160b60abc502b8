"""An attempt's start and result: success, retries with backoff, timeouts and the step's on_failure."""

from __future__ import annotations

from datetime import timedelta

from legato.core.reasons import RetryBackoff, RunTimeout, StepFailed
from legato.protocol.messages import AttemptFinished, AttemptStarted
from legato.scheduler import run_spans, stops
from legato.scheduler.engine.base import STEP_TIMEOUT_GRACE, EngineBase
from legato.scheduler.state import InstanceState, OrphanSettled, StepState, from_epoch, now_utc


class StepResults(EngineBase):
    """An attempt's start and result: success, retries with backoff, timeouts and the step's on_failure."""

    def on_attempt_started(self, msg: AttemptStarted) -> None:
        inst = self.state.instances.get(msg.instance_id)
        if inst is None or inst.status != "running":
            return
        st = inst.steps.get(msg.step_id)
        at = inst.attempts.get(msg.attempt_id)
        if st is None or at is None or st.current_attempt_id != msg.attempt_id or st.status != "queued":
            return
        started = from_epoch(msg.started_at) or now_utc()
        self._attempt_left_queue(at)
        st.status = "running"
        st.started_at = st.started_at or started
        at.status = "running"
        at.started_at = started
        at.executor = msg.executor
        self.uow.touch_step(st)
        self.uow.touch_attempt(at)
        compiled = self.graph(inst)
        timeout = compiled.step(msg.step_id).timeout
        if timeout:
            self.add_timer(
                inst,
                "step_timeout",
                started + timedelta(seconds=timeout + STEP_TIMEOUT_GRACE),
                step_id=msg.step_id,
                attempt_id=msg.attempt_id,
            )

    def on_attempt_finished(self, msg: AttemptFinished) -> None:
        stopping = self.state.stopping.get(msg.attempt_id)
        if stopping is not None:
            said = f"{msg.outcome}: {msg.error}" if msg.error else msg.outcome
            stops.settle(
                self.state,
                self.uow,
                stopping,
                from_epoch(msg.finished_at),
                msg.log_tail,
                f"cancelled with its run; attempt over ({said})",
            )
            return
        inst = self.state.instances.get(msg.instance_id)
        if inst is None or inst.status != "running":
            if inst is None:
                # The run already ended: a late result changes nothing, but an attempt row still marked
                # dispatched/running (never cancelled) is settled now instead of staying so forever.
                self.uow.orphans_settled.append(
                    OrphanSettled(
                        msg.attempt_id,
                        f"result after its run ended: {msg.outcome}: {msg.error or ''}".rstrip(": "),
                    )
                )
            return
        st = inst.steps.get(msg.step_id)
        at = inst.attempts.get(msg.attempt_id)
        if (
            st is None
            or at is None
            or st.current_attempt_id != msg.attempt_id
            or st.terminal
            or at.status not in ("dispatched", "running")
        ):
            return  # stale or repeated result for an old attempt
        self._attempt_left_queue(at)
        at.status = {"platform_error": "lost"}.get(msg.outcome, msg.outcome)
        at.started_at = at.started_at or from_epoch(msg.started_at)
        at.ended_at = from_epoch(msg.finished_at) or now_utc()
        at.executor = msg.executor or at.executor
        at.outputs = msg.outputs
        at.error = msg.error
        at.exit_code = msg.exit_code
        at.log_tail = msg.log_tail
        self.uow.touch_attempt(at)
        self.release_permits(inst, st, attempt_id=at.id)
        run_spans.attempt_ended(self.uow, inst, st, at, self.graph(inst).step(st.step_id).type)
        st.started_at = st.started_at or at.started_at
        self.uow.cancel_timer(inst.id, "step_timeout", msg.step_id)
        if msg.outcome == "succeeded":
            st.status = "succeeded"
            st.outputs = msg.outputs
            st.ended_at = at.ended_at
            st.error = None
            self.uow.touch_step(st)
            if not self.publish_signals(inst, st, at.id):
                return
            self.note(
                inst,
                "step_succeeded",
                f"step {st.step_id} succeeded",
                step_id=st.step_id,
                details={"attempt": at.attempt},
            )
            self.advance(inst)
            return
        kind = {
            "failed": "error",
            "timed_out": "timeout",
            "platform_error": "platform",
            "cancelled": "platform",
        }[msg.outcome]
        at.failure_kind = kind
        self.attempt_failed(
            inst, st, kind, msg.error or msg.outcome, "timed_out" if msg.outcome == "timed_out" else "failed"
        )

    def attempt_failed(
        self, inst: InstanceState, st: StepState, kind: str, error: str, final_status: str
    ) -> None:
        """Retry within the step's limit for this kind of failure, else apply its on_failure."""
        compiled = self.graph(inst)
        policy = compiled.step(st.step_id).retry
        limit = {"error": policy.error, "platform": policy.platform, "timeout": policy.timeout}[kind]
        used = {"error": st.retries_error, "platform": st.retries_platform, "timeout": st.retries_timeout}[
            kind
        ]
        st.error = error
        self.uow.touch_step(st)
        if used < limit:
            used += 1
            setattr(st, f"retries_{kind}", used)
            delay = policy.backoff.delay(used)
            fire_at = now_utc() + timedelta(seconds=delay)
            st.status = "retrying"
            st.reason = RetryBackoff(kind=kind, retry=used, of=limit, at=fire_at.isoformat())
            self.add_timer(inst, "retry", fire_at, step_id=st.step_id, attempt_id=st.current_attempt_id)
            run_spans.point(
                self.uow,
                inst,
                "step.retry_scheduled",
                now_utc(),
                step_id=st.step_id,
                kind=kind,
                retry=used,
                delay_s=delay,
            )
            self.note(
                inst,
                "step_retry_scheduled",
                f"step {st.step_id} {kind} failure; retry {used}/{limit} in {delay:.3g}s: {error}",
                step_id=st.step_id,
                details={"kind": kind, "delay": delay},
            )
            return
        st.status = final_status
        st.ended_at = now_utc()
        self.note(
            inst,
            f"step_{final_status}",
            f"step {st.step_id} {final_status} ({kind}): {error}",
            step_id=st.step_id,
            details={"kind": kind},
        )
        self.after_step_failure(inst, st)

    def after_step_failure(self, inst: InstanceState, st: StepState) -> None:
        compiled = self.graph(inst)
        mode = compiled.step(st.step_id).on_failure
        if mode == "ignore":
            st.failure_ignored = True
            self.uow.touch_step(st)
            self.note(
                inst,
                "step_failure_ignored",
                f"step {st.step_id} failure ignored (on_failure: ignore)",
                step_id=st.step_id,
            )
            self.advance(inst)
        elif mode == "fail":
            self.finish(
                inst,
                "failed",
                reason=StepFailed(steps=[st.step_id]),
                error=f"step {st.step_id} {st.status}: {st.error or ''}".rstrip(": "),
            )
        else:  # finish_others_then_fail: dependents are skipped, independent branches run to the end
            self.advance(inst)

    def on_retry_timer(self, inst: InstanceState, step_id: str) -> None:
        st = inst.steps.get(step_id)
        if inst.status != "running" or st is None or st.status != "retrying":
            return
        self.dispatch(inst, step_id, retry_of=st)

    def on_step_timeout_timer(self, inst: InstanceState, step_id: str, attempt_id: str | None) -> None:
        st = inst.steps.get(step_id)
        at = inst.attempts.get(attempt_id or "")
        if inst.status != "running" or st is None or at is None or st.current_attempt_id != attempt_id:
            return
        if at.status not in ("dispatched", "running"):
            return
        self._attempt_left_queue(at)
        at.status = "timed_out"
        at.failure_kind = "timeout"
        at.ended_at = now_utc()
        at.error = "no result from the executor within the step timeout"
        self.uow.touch_attempt(at)
        self.release_permits(inst, st, attempt_id=at.id)
        run_spans.attempt_ended(self.uow, inst, st, at, self.graph(inst).step(st.step_id).type)
        self.send_cancel(at.id, "step timed out")
        self.attempt_failed(inst, st, "timeout", at.error, "timed_out")

    def on_run_timeout_timer(self, inst: InstanceState) -> None:
        if inst.status == "running":
            self.finish(inst, "timed_out", reason=RunTimeout(), error="run timed out")
