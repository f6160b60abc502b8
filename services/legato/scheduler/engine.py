"""What happens to runs and steps when messages arrive: the per-workflow rules, applied in memory.

The engine mutates the actor's ``WorkflowState`` and records every change in the batch's
``UnitOfWork``; nothing here does I/O. Run strategies decide which queued runs start
(``strategies.py``); this file walks each running run's step graph: which steps are ready, which
branches are taken, dispatching attempts, applying results, retries with backoff, timeouts, failure
modes, and the end of a run.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, assert_never

import msgspec
from opentelemetry.trace import SpanContext

from legato.bus.publisher import OutgoingMessage
from legato.bus.topology import Topology, partition_of
from legato.core import (
    ParamError,
    to_json_value,
)
from legato.core.model import DYNAMIC_STEP_TYPES
from legato.core.progress import kind_of
from legato.core.reasons import (
    BadParams,
    Cancelled,
    ConditionFalse,
    ParentStopped,
    Queued,
    Reason,
    RetryBackoff,
    RunTimeout,
    StepFailed,
    UpstreamFailed,
    WaitingForDispatchSlot,
    WaitingForSignals,
    WaitingForStop,
    code_of,
    encode_reason,
)
from legato.protocol import encode
from legato.protocol.ids import attempt_id_for
from legato.protocol.messages import (
    AttemptFinished,
    AttemptStarted,
    CancelAttempt,
    ChildFinished,
    InstanceProgress,
    SignalWaitRegistered,
    SignalWaitSatisfied,
    StartRun,
    WorkItem,
)
from legato.scheduler import permits, run_spans, stops
from legato.scheduler.child_steps import FOREACH, RUNTIMES, ChildStepRuntime
from legato.scheduler.child_steps.context import MAX_DEPTH, ChildEnded, ChildStepContext, RunView, depth_of
from legato.scheduler.child_steps.outcome import (
    Collect,
    Fail,
    Note,
    Outcome,
    StartInline,
    StartRemote,
    StopChildren,
    Succeed,
)
from legato.scheduler.child_steps.runs import (
    child_finished,
    child_outputs,
    inline_child,
    remote_children,
    stop_request,
)
from legato.scheduler.run_views import CompiledLookup, RunViews
from legato.scheduler.state import (
    AttemptState,
    InstanceState,
    NewTimer,
    OrphanSettled,
    StepState,
    StoppingAttempt,
    TimelineEntry,
    UnitOfWork,
    WorkflowState,
    from_epoch,
    now_utc,
)
from legato.sel import SelError
from legato.telemetry import get_logger
from legato.telemetry.metrics import metrics
from legato.telemetry.tracing import inject_headers

log = get_logger("legato.scheduler")

QUIET_FOR_ITERATIONS = frozenset(
    {"created", "started", "succeeded", "step_dispatched", "step_succeeded", "step_skipped"}
)
# Slack past a step's timeout before the scheduler itself declares an attempt timed out (the executor
# enforces the timeout; this only covers an executor that went silent).
STEP_TIMEOUT_GRACE = 30.0


def jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: to_json_value(v) for k, v in values.items()}


_encode_json = msgspec.json.Encoder().encode


def _json(value: Any) -> bytes:
    return _encode_json(value)


# At most this many attempts of one workflow wait (dispatched, not started) in one executor queue; its
# other ready steps are held in the scheduler and sent as those start. Executor queues are FIFO, so
# without it a 10,000-step fan-out puts 10,000 items ahead of every other workflow's next step.
DISPATCH_WINDOW = 256


class RunEngine:
    """Applies messages to one workflow's state within one batch."""

    def __init__(
        self,
        state: WorkflowState,
        uow: UnitOfWork,
        *,
        topology: Topology,
        compiled: CompiledLookup,
        items_cache: dict[tuple[str, str], Any] | None = None,
        dispatch_window: int = DISPATCH_WINDOW,
    ) -> None:
        self.state = state
        self.dispatch_window = max(1, dispatch_window)
        self.uow = uow
        self.topology = topology
        self.compiled = compiled
        self.partition = partition_of(state.row.id, topology.partitions)
        # Set when a slot was freed: waiting steps are retried after the current message.
        self.permits_freed = False
        # What expressions see of the runs (read-only): graphs, typed params, environments, foreach items.
        self.views = RunViews(state, compiled, items_cache)
        self.graph = self.views.graph
        self.env = self.views.env
        self.typed_params = self.views.typed_params
        self.instance_info = self.views.instance_info
        self.foreach_items = self.views.foreach_items

    # ------------------------------------------------------------------ runs

    def new_instance(
        self, msg: StartRun, version: int, status: str, parent: SpanContext | None = None
    ) -> InstanceState:
        at = now_utc()
        inst = InstanceState(
            id=msg.instance_id,
            workflow_id=msg.workflow_id,
            version=version,
            trigger_key=msg.trigger_key,
            trigger={
                "kind": msg.trigger.kind,
                "id": msg.trigger.id,
                "by": msg.trigger.by,
                **msg.trigger.details,
            },
            status=status,
            params={},
            run_params=dict(msg.params),
            created_at=at,
            requested_at=from_epoch(msg.requested_at),
            parent_instance_id=msg.parent.instance_id if msg.parent else None,
            parent_step_id=msg.parent.step_id if msg.parent else None,
            parent_iteration=msg.parent.iteration if msg.parent else None,
            new=True,
        )
        inst.root_instance_id = inst.id
        run_spans.open_run(inst, parent, link_only=msg.trigger.kind == "signal")
        self.uow.touch_instance(inst)
        self.note(
            inst,
            "created",
            f"run created by {msg.trigger.kind} trigger",
            details={"trigger_key": msg.trigger_key},
        )
        return inst

    def resolve_params(self, inst: InstanceState) -> bool:
        """Resolve the run's params (defaults < run params, expressions); False = the run failed."""
        compiled = self.compiled(inst.workflow_id, inst.version)
        info = self.instance_info(inst)
        try:
            typed = compiled.resolve_run_params(inst.run_params, instance=info)
        except (ParamError, SelError) as exc:
            self.finish(inst, "failed", reason=BadParams(), error=f"params: {exc}")
            return False
        inst.typed_params = typed
        inst.params = jsonable(typed)
        return True

    def enqueue(self, inst: InstanceState, reason: Reason, *, front: bool = False) -> None:
        inst.status = "queued"
        inst.reason = reason
        self.state.instances[inst.id] = inst
        if front:
            self.state.queue.appendleft(inst.id)
        else:
            self.state.queue.append(inst.id)
        self.state.row.queued_count += 1
        self.uow.workflow_dirty = True
        self.uow.touch_instance(inst)
        self.progress(inst)
        run_spans.waiting(self.uow, inst, now_utc(), reason, None)

    def restart(self, inst: InstanceState) -> None:
        """A terminal run becomes active again (its undecided steps run as the next run number)."""
        inst.status = "created"
        inst.reason = None
        self.uow.touch_instance(inst)
        # First in the queue; it starts through admit() like any run, so a restart never exceeds the
        # limit (e.g. the blocker of a strict_sequential queue while runs started under parallel still
        # run). The queue stays blocked until the restarted blocker succeeds.
        self.enqueue(inst, Queued(why="restarted"), front=True)

    def descendants(self, inst: InstanceState, step_id: str) -> set[str]:
        compiled = self.graph(inst)
        seen: set[str] = set()
        todo = [step_id]
        while todo:
            for edge in compiled.successors(todo.pop()):
                if edge.target not in seen:
                    seen.add(edge.target)
                    todo.append(edge.target)
        return seen

    def start(self, inst: InstanceState) -> None:
        """queued -> running: resolve params, arm the run timeout, dispatch the root steps."""
        if inst.status == "queued":
            try:
                self.state.queue.remove(inst.id)
            except ValueError:
                pass
            self.state.row.queued_count = max(0, self.state.row.queued_count - 1)
        inst.status = "running"
        inst.reason = None
        inst.started_at = now_utc()
        self.state.instances[inst.id] = inst
        if inst.under_strategy:
            self.state.row.running_count += 1
            self.uow.workflow_dirty = True
        self.uow.touch_instance(inst)
        self.note(inst, "started", f"run {inst.run_number} started")
        self.progress(inst)
        if inst.under_strategy:
            metrics().runs_started.add(
                strategy=self.state.row.run_strategy, trigger=str(inst.trigger.get("kind"))
            )
        if not inst.body_path:
            run_spans.queue_wait(self.uow, inst, self.state.row.run_strategy)
        if not inst.params and inst.run_number == 1 and not inst.body_path and not self.resolve_params(inst):
            return
        compiled = self.compiled(inst.workflow_id, inst.version)
        timeout = compiled.definition.timeout
        if timeout and not inst.body_path:
            self.add_timer(inst, "run_timeout", inst.started_at + timedelta(seconds=timeout))
        self.advance(inst)

    def finish(
        self,
        inst: InstanceState,
        status: str,
        *,
        reason: Reason | None = None,
        error: str | None = None,
        actor: str | None = None,
        force: bool = False,
    ) -> None:
        """End a run: stop what still runs, free its slot, and let the strategy start the next."""
        was = inst.status
        if inst.terminal:
            return
        hold = was == "running" and inst.under_strategy and not inst.body_path
        stopping = self.cancel_running_steps(inst, "stopped", f"run ended {status}", force=force, hold=hold)
        inst.status = status
        inst.reason = reason
        inst.error = error
        inst.ended_at = now_utc()
        self.uow.touch_instance(inst)
        self.uow.cancel_timer(inst.id)
        for at in stopping:  # after the cancel above, which drops this run's timers
            assert at.stopping_until is not None
            self.add_timer(inst, "stop_grace", at.stopping_until, step_id=at.step_id, attempt_id=at.id)
        self.uow.cancel_waits.append(inst.id)
        self.state.instances.pop(inst.id, None)
        if was == "running" and inst.under_strategy:
            self.state.row.running_count = max(0, self.state.row.running_count - 1)
        elif was == "queued":
            try:
                self.state.queue.remove(inst.id)
            except ValueError:
                pass
            self.state.row.queued_count = max(0, self.state.row.queued_count - 1)
        self.uow.workflow_dirty = True
        if inst.parent_instance_id is not None:
            self._report_to_parent(inst)
        run_spans.run_ended(self.uow, inst, self.state.row.run_strategy)
        if inst.under_strategy:
            metrics().runs_finished.add(status=status, strategy=self.state.row.run_strategy)
        if status == "succeeded" and inst.outputs is None:
            inst.outputs = {
                sid: st.outputs or {} for sid, st in inst.steps.items() if st.status == "succeeded"
            }
        if inst.body_path and status == "succeeded":
            return  # a succeeded iteration needs no timeline entry of its own: the foreach counts it
        msg = f"run ended {status}" + (f": {error}" if error else "")
        self.note(inst, status, msg, actor=actor, details=encode_reason(reason))
        self.progress(inst)
        row = self.state.row
        if status == "succeeded" and row.blocked_by == inst.id:
            row.blocked_by = None
            row.blocked_since = None
            self.note(
                inst, "queue_unblocked", "strict_sequential: the restarted run succeeded; queue released"
            )
        if (
            status in ("failed", "timed_out")
            and was == "running"
            and self.state.row.run_strategy == "strict_sequential"
            and inst.under_strategy
        ):
            self.state.row.blocked_by = inst.id
            self.state.row.blocked_since = inst.ended_at
            self.note(
                inst,
                "queue_blocked",
                "strict_sequential: the queue is blocked until an operator unblocks or restarts this run",
            )

    # ------------------------------------------------------------------ the step graph

    def advance(self, inst: InstanceState) -> None:
        """Decide every step whose predecessors are all done; end the run when nothing is left."""
        if inst.status != "running":
            return
        compiled = self.graph(inst)
        progressed = True
        while progressed and inst.status == "running":
            progressed = False
            for step_id in compiled.topo_order:
                known = inst.steps.get(step_id)
                if known is not None and known.status != "pending":
                    continue
                edges = compiled.predecessors(step_id)
                preds = [inst.steps.get(e.source) for e in edges]
                if any(p is None or not p.terminal for p in preds):
                    continue
                progressed = True
                failed_up = [
                    e.source for e, p in zip(edges, preds, strict=True) if p is not None and p.failed
                ]
                if failed_up:
                    self.skip(inst, step_id, UpstreamFailed(steps=failed_up))
                    continue
                if edges:
                    env = self.env(inst)
                    try:
                        active = [
                            e.source
                            for e, p in zip(edges, preds, strict=True)
                            if p is not None and p.done_ok and compiled.edge_active(e, env)
                        ]
                    except SelError as exc:
                        self.fail_step_without_attempt(inst, step_id, f"condition: {exc}")
                        continue
                    if not active:
                        self.skip(inst, step_id, ConditionFalse(from_=[e.source for e in edges]))
                        continue
                self.dispatch(inst, step_id)
                if inst.status != "running":
                    return
        if inst.status == "running" and all(
            sid in inst.steps and inst.steps[sid].terminal for sid in compiled.topo_order
        ):
            failed = [sid for sid in compiled.topo_order if inst.steps[sid].failed]
            if failed:
                first = inst.steps[failed[0]]
                self.finish(
                    inst,
                    "failed",
                    reason=StepFailed(steps=failed),
                    error=f"step {failed[0]} {first.status}: {first.error or ''}".rstrip(": "),
                )
            else:
                self.finish(inst, "succeeded")

    def skip(self, inst: InstanceState, step_id: str, reason: Reason) -> None:
        st = StepState(instance_id=inst.id, step_id=step_id, status="skipped", reason=reason, new=True)
        st.ended_at = st.created_at
        inst.steps[step_id] = st
        self.uow.touch_step(st)
        self.note(
            inst,
            "step_skipped",
            f"step {step_id} skipped ({code_of(reason)})",
            step_id=step_id,
            details=encode_reason(reason),
        )

    def fail_step_without_attempt(self, inst: InstanceState, step_id: str, error: str) -> None:
        st = inst.steps.get(step_id)
        if st is None:
            st = StepState(instance_id=inst.id, step_id=step_id, status="failed", new=True)
            inst.steps[step_id] = st
        st.status = "failed"
        st.error = error
        st.ended_at = now_utc()
        self.uow.touch_step(st)
        self.note(inst, "step_failed", f"step {step_id} failed: {error}", step_id=step_id)
        self.after_step_failure(inst, st)

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
        self.state.unstarted[queue] = self.state.unstarted.get(queue, 0) + 1
        at = AttemptState(
            id=attempt_id,
            instance_id=inst.id,
            step_id=step_id,
            attempt=st.attempts,
            status="dispatched",
            queue=queue,
            dispatched_at=now,
            new=True,
        )
        # One attempt per step is held (its current one): drop the previous without scanning the run.
        if previous is not None:
            inst.attempts.pop(previous, None)
        inst.attempts[attempt_id] = at
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
                self.topology.work_subject(queue),
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

    def _attempt_left_queue(self, at: AttemptState) -> None:
        if at.status == "dispatched":
            self.state.unstarted[at.queue] = max(0, self.state.unstarted.get(at.queue, 0) - 1)

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

    # ------------------------------------------------------------------ child steps (foreach, loop, subworkflow)

    def _child_ctx(
        self, inst: InstanceState, st: StepState, config: Mapping[str, Any] | None = None
    ) -> ChildStepContext:
        graph = self.graph(inst)
        return ChildStepContext(
            run=RunView(inst.id, inst.workflow_id, inst.run_number, depth_of(inst.trigger)),
            step_id=st.step_id,
            graph=graph,
            progress=st.progress,
            config=config or {},
            env=lambda: self.env(inst),
            typed_params=lambda: self.typed_params(inst),
            items=lambda: self.foreach_items(inst, st.step_id),
        )

    def _start_child_step(self, inst: InstanceState, st: StepState) -> None:
        """Resolve the step's params, mark it running and let its runtime decide how it begins."""
        graph = self.graph(inst)
        step = graph.step(st.step_id)
        if depth_of(inst.trigger) >= MAX_DEPTH:
            self.fail_step_without_attempt(inst, st.step_id, f"nesting deeper than {MAX_DEPTH} child runs")
            return
        try:
            resolved = graph.resolve_step(st.step_id, self.env(inst))
        except (ParamError, SelError) as exc:
            self.fail_step_without_attempt(inst, st.step_id, f"params: {exc}")
            return
        st.status = "running"
        st.started_at = st.started_at or now_utc()
        st.params = jsonable(resolved.params)
        st.reason = None
        st.error = None
        self.uow.touch_step(st)
        runtime = RUNTIMES.get(step.type)
        if runtime is None:
            self.fail_step_without_attempt(inst, st.step_id, f"unknown step type {step.type!r}")
            return
        self.apply_outcome(inst, st, runtime, runtime.start(self._child_ctx(inst, st, resolved.config)))

    def apply_outcome(
        self, inst: InstanceState, st: StepState, runtime: ChildStepRuntime, outcome: Outcome
    ) -> None:
        """Apply a child step's decisions in order; ask it again while it says ``resume`` and still runs."""
        while not outcome.empty:
            if outcome.progress is not None:
                st.progress = outcome.progress
            self.uow.touch_step(st)
            for decision in outcome.decisions:
                self._apply_decision(inst, st, decision)
            if not outcome.resume or st.status != "running":
                return
            outcome = runtime.resume(self._child_ctx(inst, st))

    def _apply_decision(
        self,
        inst: InstanceState,
        st: StepState,
        decision: Note | StartInline | StartRemote | StopChildren | Collect | Succeed | Fail,
    ) -> None:
        match decision:
            case Note(event, message, details):
                self.note(inst, event, message, step_id=st.step_id, details=details)
            case StartInline():
                self._start_inline(inst, st, decision)
            case StartRemote(start):
                self.uow.outbox.append(
                    OutgoingMessage(
                        self.topology.trigger_subject(start.workflow_id),
                        encode(start),
                        msg_id=f"start:{start.instance_id}",
                        headers=inject_headers({}),
                    )
                )
                index = start.parent.iteration if start.parent else None
                self.note(
                    inst,
                    "child_started",
                    f"step {st.step_id}: child run {start.instance_id} of {start.workflow_id}",
                    step_id=st.step_id,
                    details={"child": start.instance_id, "workflow": start.workflow_id, "index": index},
                )
            case StopChildren(why):
                self.stop_children(inst, st, why)
            case Collect():
                self.uow.collect.append((inst.id, st.step_id))
            case Succeed(outputs, message, publish):
                st.outputs = outputs
                st.status = "succeeded"
                st.ended_at = now_utc()
                self.uow.touch_step(st)
                self.note(inst, "step_succeeded", message, step_id=st.step_id)
                if not publish or self.publish_signals(inst, st, f"{inst.id}-{st.step_id}-{inst.run_number}"):
                    self.advance(inst)
            case Fail(error, stop, outputs):
                if outputs is not None:
                    st.outputs = outputs
                if stop:
                    self.stop_children(inst, st, error)
                st.status = "failed"
                st.error = error
                st.ended_at = now_utc()
                self.uow.touch_step(st)
                self.note(inst, "step_failed", f"step {st.step_id} failed: {error}", step_id=st.step_id)
                self.after_step_failure(inst, st)
            case _:
                assert_never(decision)

    def _start_inline(self, inst: InstanceState, st: StepState, start: StartInline) -> None:
        """A child run of the step's body (a foreach or loop iteration), started here and now."""
        child = inline_child(inst, st.step_id, self.graph(inst).step(st.step_id).type, start)
        run_spans.open_child(child, inst)
        self.uow.touch_instance(child)
        self.uow.touch_step(st)
        self.start(child)

    def stop_children(self, inst: InstanceState, st: StepState, why: str) -> None:
        """Stop the step's live child runs: inline ones here, others through their workflows' actors."""
        for child in [
            c
            for c in self.state.instances.values()
            if c.parent_instance_id == inst.id and c.parent_step_id == st.step_id and not c.terminal
        ]:
            self.finish(child, "stopped", reason=ParentStopped(why=why), error=f"stopped: {why}")
        for workflow, child_id in remote_children(st.progress):
            self.uow.outbox.append(
                OutgoingMessage(
                    self.topology.trigger_subject(workflow),
                    encode(stop_request(workflow, child_id, why)),
                    msg_id=f"parent-stop:{child_id}",
                )
            )

    def _report_to_parent(self, child: InstanceState) -> None:
        """A child run ended: tell its parent (in memory when inline, else by message)."""
        if child.body_path:
            parent = self.state.instances.get(child.parent_instance_id or "")
            if parent is not None:
                ended = ChildEnded(child.parent_iteration, child.status, child_outputs(child), child.error)
                self.on_child_ended(parent, child.parent_step_id or "", ended)
            return
        parent_wf = child.trigger.get("parent_workflow")
        if not isinstance(parent_wf, str):
            return
        self.uow.outbox.append(
            OutgoingMessage(
                self.topology.trigger_subject(parent_wf),
                encode(child_finished(child, parent_wf)),
                msg_id=f"childdone:{child.id}:{child.run_number}",
                headers=inject_headers({}),
            )
        )

    def on_child_finished(self, msg: ChildFinished) -> None:
        """A child run of another workflow (or of this one, through its actor) ended."""
        parent = self.state.instances.get(msg.parent_instance_id)
        if parent is None:
            return
        ended = ChildEnded(msg.iteration, msg.status, msg.outputs, msg.error, msg.child_instance_id)
        self.on_child_ended(parent, msg.parent_step_id, ended)

    def on_child_ended(self, parent: InstanceState, step_id: str, ended: ChildEnded) -> None:
        """Join an ended child run into its parent's step, through the step's runtime."""
        st = parent.steps.get(step_id)
        if parent.status != "running" or st is None or st.status != "running" or not st.progress:
            return  # the parent or its step ended meanwhile (e.g. stopped): nothing to join
        runtime = RUNTIMES.get(str(kind_of(st.progress)))
        if runtime is not None:
            self.apply_outcome(
                parent, st, runtime, runtime.on_child_ended(self._child_ctx(parent, st), ended)
            )

    def complete_foreach(self, parent: InstanceState, step_id: str, results: list[Any]) -> None:
        """All iterations ended and their outputs are collected (item order): the step ends."""
        st = parent.steps.get(step_id)
        if st is None or st.status != "running" or not st.progress:
            return
        self.apply_outcome(parent, st, FOREACH, FOREACH.complete(self._child_ctx(parent, st), results))

    # ------------------------------------------------------------------ stops awaiting confirmation

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

    # ------------------------------------------------------------------ signals

    def signals_ready(self, inst: InstanceState, st: StepState) -> bool:
        """True once every ``wait_for_signals`` entry has its signal; else registers the waits."""
        compiled = self.graph(inst)
        step = compiled.step(st.step_id)
        names = [w.name for w in step.wait_for_signals]
        got = st.signals or {}
        if all(n in got for n in names):
            return True
        if st.status == "waiting" and isinstance(st.reason, WaitingForSignals):
            return False  # registered before; the router answers with SignalWaitSatisfied
        try:
            waits = compiled.resolve_signal_waits(st.step_id, self.env(inst))
        except (ParamError, SelError) as exc:
            self.fail_step_without_attempt(inst, st.step_id, f"wait_for_signals: {exc}")
            return False
        for index, wait in enumerate(waits):
            if wait.name in got:
                continue
            wait_id = f"{inst.id}:{st.step_id}:{index}"
            match = {k: {"op": p.op, "value": to_json_value(p.value)} for k, p in wait.match.items()}
            self.uow.outbox.append(
                OutgoingMessage(
                    self.topology.signal_wait_subject,
                    encode(
                        SignalWaitRegistered(
                            wait_id=wait_id,
                            workflow_id=inst.workflow_id,
                            instance_id=inst.id,
                            step_id=st.step_id,
                            name=wait.name,
                            match=match,
                        )
                    ),
                    msg_id=f"waitreg:{wait_id}",
                    headers=inject_headers({}),
                )
            )
        st.status = "waiting"
        st.waiting_since = now_utc()
        missing = [n for n in names if n not in got]
        st.reason = WaitingForSignals(
            signals=names, missing=missing, message="waiting for signals " + ", ".join(missing)
        )
        self.uow.touch_step(st)
        run_spans.waiting(self.uow, inst, now_utc(), st.reason, st.step_id)
        self.note(
            inst,
            "step_waiting",
            f"step {st.step_id} waits for signals {', '.join(names)}",
            step_id=st.step_id,
        )
        return False

    def on_signal_wait_satisfied(self, msg: SignalWaitSatisfied) -> None:
        inst = self.state.instances.get(msg.instance_id)
        if inst is None or inst.status != "running":
            return
        st = inst.steps.get(msg.step_id)
        if st is None or st.status != "waiting":
            return
        got = dict(st.signals or {})
        if msg.name in got:
            return  # the same wait answered twice
        got[msg.name] = {**msg.fields, "_id": msg.signal_id}
        st.signals = got
        self.uow.touch_step(st)
        self.note(
            inst,
            "step_signal_received",
            f"step {st.step_id} received signal {msg.name} ({msg.signal_id})",
            step_id=st.step_id,
            details={"signal": msg.name, "signal_id": msg.signal_id},
        )
        st.status = "queued"  # leave "waiting for signals"; dispatch decides what comes next
        st.reason = None
        self.dispatch(inst, st.step_id, retry_of=st)

    def publish_signals(self, inst: InstanceState, st: StepState, attempt_id: str) -> bool:
        """Emit the step's ``publish_signals`` once per successful attempt; False if they cannot be built."""
        compiled = self.graph(inst)
        if not compiled.step(st.step_id).publish_signals:
            return True
        try:
            published = compiled.resolve_published_signals(st.step_id, self.env(inst, st.signals))
        except (ParamError, SelError) as exc:
            st.status = "failed"
            st.error = f"publish_signals: {exc}"
            st.ended_at = now_utc()
            self.uow.touch_step(st)
            self.note(inst, "step_failed", f"step {st.step_id} failed: {st.error}", step_id=st.step_id)
            self.after_step_failure(inst, st)
            return False
        for index, sig in enumerate(published):
            headers = inject_headers(
                {
                    "Legato-Publisher-Workflow": inst.workflow_id,
                    "Legato-Publisher-Instance": inst.id,
                    "Legato-Publisher-Step": st.step_id,
                }
            )
            self.uow.outbox.append(
                OutgoingMessage(
                    self.topology.signal_subject(sig.name),
                    _json(sig.params),
                    msg_id=f"pub:{attempt_id}:{index}",
                    headers=headers,
                )
            )
            self.note(
                inst,
                "signal_published",
                f"step {st.step_id} published signal {sig.name}",
                step_id=st.step_id,
                details={"signal": sig.name, "id": f"pub:{attempt_id}:{index}"},
            )
        return True

    # ------------------------------------------------------------------ concurrency permits (permits.py)

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

    # ------------------------------------------------------------------ small effects

    def add_timer(
        self,
        inst: InstanceState,
        kind: str,
        fire_at: datetime,
        *,
        step_id: str | None = None,
        attempt_id: str | None = None,
    ) -> None:
        self.uow.timers.append(
            NewTimer(
                partition=self.partition,
                workflow_id=inst.workflow_id,
                instance_id=inst.id,
                kind=kind,
                fire_at=fire_at,
                step_id=step_id,
                attempt_id=attempt_id,
            )
        )

    def note(
        self,
        inst: InstanceState,
        event: str,
        message: str,
        *,
        step_id: str | None = None,
        actor: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        if inst.body_path and event in QUIET_FOR_ITERATIONS:
            return  # 100,000 iterations need no 400,000 routine entries; failures are still noted
        self.uow.note(TimelineEntry(inst.id, event, message, step_id=step_id, actor=actor, details=details))

    def progress(self, inst: InstanceState) -> None:
        """Tell watchers (``legato dev``, ``start --wait``) after commit; best effort, the last status wins."""
        if inst.body_path:
            return
        reason = code_of(inst.reason) if inst.reason else None
        self.uow.progress[inst.id] = InstanceProgress(
            workflow_id=inst.workflow_id,
            instance_id=inst.id,
            status=inst.status,
            reason=reason,
            at=time.time(),
        )
