"""Sending a step's next attempt: the per-queue dispatch window and lanes, and the concurrency permits."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from legato.bus.publisher import OutgoingMessage
from legato.core import ParamError
from legato.core.model import DYNAMIC_STEP_TYPES
from legato.core.reasons import WaitingForDispatchSlot, encode_reason
from legato.protocol import encode
from legato.protocol.ids import attempt_id_for
from legato.protocol.messages import WorkItem
from legato.scheduler import permits, run_spans
from legato.scheduler.engine.base import EngineBase, jsonable
from legato.scheduler.state import AttemptState, InstanceState, StepState, now_utc
from legato.sel import SelError
from legato.telemetry.tracing import inject_headers


class StepDispatch(EngineBase):
    """Sending a step's next attempt: the per-queue dispatch window and the concurrency permits."""

    def dispatch(
        self, inst: InstanceState, step_id: str, *, retry_of: StepState | None = None, draining: bool = False
    ) -> None:
        """Start the step's next attempt: once its signals are in and it holds its concurrency permits,
        resolve its params and send it to its executor queue (through the outbox)."""
        compiled = self.graph(inst)
        step = compiled.step(step_id)
        st = retry_of or inst.steps.get(step_id)
        if st is None:
            st = StepState(instance_id=inst.id, step_id=step_id, status="queued", new=True)
            inst.steps[step_id] = st
        if step.type in DYNAMIC_STEP_TYPES:  # everything else (built-in leaf or plugin) is an executor's
            self._start_child_step(inst, st)
            return
        if step.wait_for_signals and not self.signals_ready(inst, st):
            return
        # Before any per-step work (params, permits): holding a step back must cost next to nothing.
        queue = step.queue or "default"
        if not draining and self._hold_for_dispatch_slot(inst, st, queue):
            return
        if not self.acquire_permits(inst, st):
            return
        env = self.env(inst, st.signals)
        try:
            resolved = compiled.resolve_step(step_id, env)
        except (ParamError, SelError) as exc:
            self.release_permits(inst, st, attempt_id=None)
            self.fail_step_without_attempt(inst, step_id, f"params: {exc}")
            return
        previous = st.current_attempt_id
        st.attempts += 1
        attempt_id = attempt_id_for(inst.id, step_id, st.attempts)
        now = now_utc()
        st.status = "queued"
        st.current_attempt_id = attempt_id
        st.params = jsonable(resolved.params)
        st.reason = None
        st.error = None
        self.uow.touch_step(st)
        at = AttemptState(
            id=attempt_id,
            instance_id=inst.id,
            step_id=step_id,
            attempt=st.attempts,
            status="dispatched",
            queue=queue,
            dispatched_at=now,
            # The lead lane while fewer than ``dispatch_lead`` of this workflow's attempts sent there are
            # waiting or running; the rest go to the bulk lane, which executors serve after the lead one.
            lead=self.state.lead_in_flight.get(queue, 0) < self.dispatch_lead,
            new=True,
        )
        # One attempt per step is held (its current one): drop the previous without scanning the run.
        if previous is not None:
            inst.attempts.pop(previous, None)
        inst.attempts[attempt_id] = at
        self.state.note_dispatched(at)
        self.uow.touch_attempt(at)
        permits.hold(self.state, self.uow, inst, st, step.concurrency_tags, attempt_id)
        work = WorkItem(
            attempt_id=attempt_id,
            workflow_id=inst.workflow_id,
            instance_id=inst.id,
            step_id=step_id,
            attempt=st.attempts,
            step_type=step.type,
            config=self.attempt_config(st, step.type, jsonable(resolved.config)),
            params=st.params,
            timeout=resolved.timeout,
            reply_subject=self.topology.event_subject(inst.workflow_id),
            dispatched_at=time.time(),
        )
        tp = run_spans.attempt_traceparent(inst, at)
        self.uow.outbox.append(
            OutgoingMessage(
                self.topology.work_subject(queue) if at.lead else self.topology.work_bulk_subject(queue),
                encode(work),
                msg_id=attempt_id,
                headers={"traceparent": tp} if tp else inject_headers({}),
            )
        )
        self.note(
            inst,
            "step_dispatched",
            f"step {step_id} attempt {st.attempts} dispatched to queue {queue}",
            step_id=step_id,
            details={"attempt_id": attempt_id},
        )

    def _hold_for_dispatch_slot(self, inst: InstanceState, st: StepState, queue: str) -> bool:
        """Hold the step back (FIFO per queue) while this workflow has the window full in ``queue``."""
        backlog = self.state.dispatch_backlog.get(queue)
        if self.state.unstarted.get(queue, 0) < self.dispatch_window and not backlog:
            return False
        st.status = "waiting"
        st.waiting_since = st.waiting_since or now_utc()
        st.reason = WaitingForDispatchSlot(
            queue=queue,
            limit=self.dispatch_window,
            message=f"waiting to be sent: {self.dispatch_window} steps of this workflow already wait "
            f"for an executor in queue {queue}",
        )
        self.uow.touch_step(st)
        self.state.dispatch_backlog.setdefault(queue, deque()).append((inst.id, st.step_id))
        return True

    def drain_dispatch_backlog(self) -> None:
        """Send held steps, oldest first, while their queue has room in this workflow's window."""
        for queue, backlog in list(self.state.dispatch_backlog.items()):
            while backlog and self.state.unstarted.get(queue, 0) < self.dispatch_window:
                inst_id, step_id = backlog.popleft()
                inst = self.state.instances.get(inst_id)
                st = inst.steps.get(step_id) if inst is not None else None
                if inst is None or st is None or inst.status != "running" or st.status != "waiting":
                    continue  # the run or the step ended (cancelled, skipped) while it was held
                if not isinstance(st.reason, WaitingForDispatchSlot):
                    continue
                st.status = "queued"
                st.reason = None
                st.waiting_since = None
                self.dispatch(inst, step_id, retry_of=st, draining=True)
            if not backlog:
                del self.state.dispatch_backlog[queue]

    @staticmethod
    def attempt_config(st: StepState, step_type: str, config: dict[str, Any]) -> dict[str, Any]:
        """A ``sleep`` retried after its executor was lost resumes: it wakes when the step's first
        attempt would have (``until``), not a whole duration after the retry (the first start survives
        in the step's ``started_at``). A restarted run (platform retries reset) sleeps afresh."""
        duration = config.get("duration")
        resumed = st.retries_platform > 0 and st.started_at is not None
        if step_type == "sleep" and resumed and isinstance(duration, int | float):
            assert st.started_at is not None
            return {**config, "until": st.started_at.timestamp() + float(duration)}
        return config

    def acquire_permits(self, inst: InstanceState, st: StepState) -> bool:
        """Take the step's slot under ``step_concurrency`` and each named tag, oldest waiter first."""
        compiled = self.graph(inst)
        tags = compiled.step(st.step_id).concurrency_tags
        reason = permits.blocking_limit(self.state, inst, st, tags, compiled.definition.step_concurrency)
        if reason is None:
            permits.leave_waiters(self.state, self.uow, inst, st, tags)
            if st.status == "waiting":
                st.waiting_since = None
            return True
        if permits.wait(self.state, self.uow, inst, st, reason):
            run_spans.waiting(self.uow, inst, now_utc(), reason, st.step_id)
            self.note(
                inst,
                "step_waiting",
                f"step {st.step_id} {reason.message}",
                step_id=st.step_id,
                details=encode_reason(reason),
            )
        return False

    def release_permits(self, inst: InstanceState, st: StepState, *, attempt_id: str | None) -> None:
        """The attempt ended (or the waiting step went away): free its slots and wake who waits."""
        compiled = self.graph(inst)
        tags = compiled.step(st.step_id).concurrency_tags
        permits.release(self.state, self.uow, inst, st, tags, attempt_id=attempt_id)
        # Only a limited slot can have waiters worth retrying.
        if attempt_id is not None and (tags or compiled.definition.step_concurrency):
            self.permits_freed = True

    def retry_waiting(self) -> None:
        """Give freed slots to this workflow's waiting steps, oldest first."""
        for _since, inst, st in self.state.waiting_steps():
            if inst.status == "running" and st.status == "waiting":
                st.status = "queued"
                self.dispatch(inst, st.step_id, retry_of=st)
