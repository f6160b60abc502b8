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
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

import msgspec
from opentelemetry.trace import SpanContext

from legato.bus.publisher import OutgoingMessage
from legato.bus.topology import Topology, partition_of
from legato.core import (
    CompiledWorkflow,
    EvalEnv,
    InstanceInfo,
    ParamError,
    from_json_value,
    to_json_value,
)
from legato.core.model import DYNAMIC_STEP_TYPES
from legato.protocol import encode
from legato.protocol.ids import attempt_id_for
from legato.protocol.messages import (
    AttemptFinished,
    AttemptStarted,
    CancelAttempt,
    InstanceProgress,
    SignalWaitRegistered,
    SignalWaitSatisfied,
    StartRun,
    WorkItem,
)
from legato.scheduler import dynamic, run_spans
from legato.scheduler.state import (
    DISPATCH_WAIT,
    AttemptState,
    InstanceState,
    NewTimer,
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
# How long a stopped run's attempt may take to confirm that it stopped before its strategy slot is given
# to the next run anyway (the executor's kill grace, SIGTERM -> SIGKILL, is 2 s by default). A dead
# executor is detected within seconds (``liveness.py``) and releases the slot at once.
STOP_CONFIRM_GRACE = 30.0

CompiledLookup = Callable[[str, int], CompiledWorkflow]


def jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: to_json_value(v) for k, v in values.items()}


_encode_json = msgspec.json.Encoder().encode


def _json(value: Any) -> bytes:
    return _encode_json(value)


# At most this many attempts of one workflow wait (dispatched, not started) in one executor queue; its
# other ready steps are held in the scheduler and sent as those start. Executor queues are FIFO, so
# without it a 10,000-step fan-out puts 10,000 items ahead of every other workflow's next step.
DISPATCH_WINDOW = 256


class StepsView(Mapping[str, Any]):
    """``steps.<id>`` as expressions see it: ``{"outputs", "status"}`` read from the run's step states
    when an expression asks, the enclosing graph's steps (``outer``) behind them inside a body.

    Building every step's entry for each dispatch made a run of 10,000 parallel steps quadratic (seconds
    of CPU per batch, with every other workflow of the partition waiting behind it). Read once per
    evaluation, right after ``env()``: what it shows is what a copy made at that moment would show.
    """

    __slots__ = ("_outer", "_steps")

    def __init__(self, steps: Mapping[str, StepState], outer: Mapping[str, Any] | None = None) -> None:
        self._steps = steps
        self._outer = outer

    def __getitem__(self, step_id: str) -> dict[str, Any]:
        st = self._steps.get(step_id)
        if st is not None:
            return {"outputs": st.outputs or {}, "status": st.status}
        if self._outer is not None:
            value: dict[str, Any] = self._outer[step_id]
            return value
        raise KeyError(step_id)

    def __iter__(self) -> Iterator[str]:
        yield from self._steps
        if self._outer is not None:
            yield from (sid for sid in self._outer if sid not in self._steps)

    def __len__(self) -> int:
        return sum(1 for _ in self)


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
        # foreach items per (run, step), evaluated once per activation (ranges stay lazy).
        self.items_cache: dict[tuple[str, str], Any] = items_cache if items_cache is not None else {}

    # ------------------------------------------------------------------ runs

    def graph(self, inst: InstanceState) -> CompiledWorkflow:
        """The step graph a run executes: the workflow's, or the body of one of its steps."""
        compiled = self.compiled(inst.workflow_id, inst.version)
        if inst.body_path:
            for part in inst.body_path.split("/"):
                compiled = compiled.body(part)
        return compiled

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
            self.finish(inst, "failed", reason={"code": "bad_params"}, error=f"params: {exc}")
            return False
        inst.typed_params = typed
        inst.params = jsonable(typed)
        return True

    def instance_info(self, inst: InstanceState) -> InstanceInfo:
        return InstanceInfo(
            id=inst.id,
            workflow_id=inst.workflow_id,
            version=inst.version,
            start_time=inst.started_at or inst.created_at,
            trigger=dict(inst.trigger),
        )

    def typed_params(self, inst: InstanceState) -> dict[str, Any]:
        if inst.typed_params is None and inst.body_path:
            inst.typed_params = dynamic.child_typed_params(self, inst)
        if inst.typed_params is None:
            compiled = self.compiled(inst.workflow_id, inst.version)
            specs = compiled.definition.params
            inst.typed_params = {
                k: (from_json_value(v, specs[k].type) if k in specs else v) for k, v in inst.params.items()
            }
        return inst.typed_params

    def enqueue(self, inst: InstanceState, reason: dict[str, Any], *, front: bool = False) -> None:
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
        run_spans.waiting(self, inst, now_utc(), reason, None)

    def restart(self, inst: InstanceState) -> None:
        """A terminal run becomes active again (its undecided steps run as the next run number)."""
        inst.status = "created"
        inst.reason = None
        self.uow.touch_instance(inst)
        # First in the queue; it starts through admit() like any run, so a restart never exceeds the
        # limit (e.g. the blocker of a strict_sequential queue while runs started under parallel still
        # run). The queue stays blocked until the restarted blocker succeeds.
        self.enqueue(inst, {"code": "queued", "why": "restarted"}, front=True)

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
            run_spans.queue_wait(self, inst, self.state.row.run_strategy)
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
        reason: dict[str, Any] | None = None,
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
            dynamic.child_ended(self, inst)
        run_spans.run_ended(self, inst, self.state.row.run_strategy)
        if inst.under_strategy:
            metrics().runs_finished.add(status=status, strategy=self.state.row.run_strategy)
        if status == "succeeded" and inst.outputs is None:
            inst.outputs = {
                sid: st.outputs or {} for sid, st in inst.steps.items() if st.status == "succeeded"
            }
        if inst.body_path and status == "succeeded":
            return  # a succeeded iteration needs no timeline entry of its own: the foreach counts it
        msg = f"run ended {status}" + (f": {error}" if error else "")
        self.note(inst, status, msg, actor=actor, details=reason)
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

    def env(self, inst: InstanceState, signals: Mapping[str, Any] | None = None) -> EvalEnv:
        info = self.instance_info(inst)
        iteration = None
        outer: Mapping[str, Any] | None = None
        if inst.body_path:
            outer, iteration = dynamic.iteration_env(self, inst)
        steps = StepsView(inst.steps, outer)
        return EvalEnv(
            params=self.typed_params(inst),
            steps=steps,
            signals=dict(signals or {}),
            instance={
                "id": info.id,
                "workflow_id": info.workflow_id,
                "version": info.version,
                "start_time": info.start_time,
                "trigger": info.trigger,
                "run_number": inst.run_number,
            },
            iteration=iteration,
        )

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
                    self.skip(inst, step_id, {"code": "upstream_failed", "steps": failed_up})
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
                        self.skip(
                            inst, step_id, {"code": "condition_false", "from": [e.source for e in edges]}
                        )
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
                    reason={"code": "step_failed", "steps": failed},
                    error=f"step {failed[0]} {first.status}: {first.error or ''}".rstrip(": "),
                )
            else:
                self.finish(inst, "succeeded")

    def skip(self, inst: InstanceState, step_id: str, reason: dict[str, Any]) -> None:
        st = StepState(instance_id=inst.id, step_id=step_id, status="skipped", reason=reason, new=True)
        st.ended_at = st.created_at
        inst.steps[step_id] = st
        self.uow.touch_step(st)
        self.note(
            inst,
            "step_skipped",
            f"step {step_id} skipped ({reason['code']})",
            step_id=step_id,
            details=reason,
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
            dynamic.start_step(self, inst, st)
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
        self.record_permits(inst, st, step.concurrency_tags, attempt_id)
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
        st.reason = {
            "code": DISPATCH_WAIT,
            "queue": queue,
            "limit": self.dispatch_window,
            "message": f"waiting to be sent: {self.dispatch_window} steps of this workflow already wait "
            f"for an executor in queue {queue}",
        }
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
                if (st.reason or {}).get("code") != DISPATCH_WAIT:
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
            self.settle_stop(
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
                    (
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
        run_spans.attempt_ended(self, inst, st, at, self.graph(inst).step(st.step_id).type)
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
            st.reason = {
                "code": "retry_backoff",
                "kind": kind,
                "retry": used,
                "of": limit,
                "at": fire_at.isoformat(),
            }
            self.add_timer(inst, "retry", fire_at, step_id=st.step_id, attempt_id=st.current_attempt_id)
            run_spans.point(
                self,
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
                reason={"code": "step_failed", "steps": [st.step_id]},
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
        run_spans.attempt_ended(self, inst, st, at, self.graph(inst).step(st.step_id).type)
        self.send_cancel(at.id, "step timed out")
        self.attempt_failed(inst, st, "timeout", at.error, "timed_out")

    def on_run_timeout_timer(self, inst: InstanceState) -> None:
        if inst.status == "running":
            self.finish(inst, "timed_out", reason={"code": "run_timeout"}, error="run timed out")

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
                        at.stopping_until = at.ended_at + timedelta(seconds=STOP_CONFIRM_GRACE)
                        self.state.stopping[at.id] = StoppingAttempt(
                            at.id, inst.id, at.step_id, at.stopping_until
                        )
                        stopping.append(at)
                    self.uow.touch_attempt(at)
                    self.send_cancel(at.id, why, force=force)
                    self.release_permits(inst, st, attempt_id=at.id)
                    run_spans.attempt_ended(self, inst, st, at, self.graph(inst).step(st.step_id).type)
                elif st.status == "waiting":
                    self.release_permits(inst, st, attempt_id=None)
                elif st.progress is not None and st.status == "running":
                    st.status = status  # first, so the children's ends are not joined back
                    dynamic.stop_children(self, inst, st, why)
                self.uow.cancel_timer(inst.id, None, st.step_id)
                st.status = status
                st.ended_at = now_utc()
                st.reason = {"code": "cancelled", "why": why}
                self.uow.touch_step(st)
                self.note(inst, f"step_{status}", f"step {st.step_id} {status}: {why}", step_id=st.step_id)
        return stopping

    # ------------------------------------------------------------------ stops awaiting confirmation

    def stop_wait_reason(self) -> dict[str, Any] | None:
        """Why the next run waits although a slot looks free: stopped runs not confirmed stopped yet."""
        if not self.state.stopping:
            return None
        first = min(self.state.stopping.values(), key=lambda s: s.until)
        runs = self.state.stopping_runs()
        return {
            "code": "waiting_for_stop",
            "runs": runs,
            "attempts": sorted(self.state.stopping),
            "until": first.until.isoformat(),
            "message": (
                f"waiting for run {first.instance_id} (step {first.step_id}, attempt {first.attempt_id}) "
                f"to confirm it stopped, at most until {first.until.isoformat(timespec='seconds')}"
            ),
        }

    def settle_stop(
        self, stopping: StoppingAttempt, ended_at: datetime | None, log_tail: str | None, why: str
    ) -> None:
        """The stopping attempt is known to be over (or given up on): its run's slot is free again."""
        self.state.stopping.pop(stopping.attempt_id, None)
        self.uow.stops_settled.append((stopping.attempt_id, ended_at, log_tail, why[:4000]))
        self.uow.cancel_timer(stopping.instance_id, "stop_grace", stopping.step_id)
        self.uow.note(
            TimelineEntry(
                stopping.instance_id,
                "step_stop_confirmed",
                f"step {stopping.step_id}: {why}",
                step_id=stopping.step_id,
                details={"attempt_id": stopping.attempt_id},
            )
        )

    def on_stop_grace_timer(self, attempt_id: str | None) -> None:
        stopping = self.state.stopping.get(attempt_id or "")
        if stopping is None:
            return
        self.settle_stop(
            stopping,
            None,
            None,
            f"cancelled with its run; no confirmation that it stopped within {STOP_CONFIRM_GRACE:g}s: "
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
        if st.status == "waiting" and st.reason and st.reason.get("code") == "waiting_for_signals":
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
            self.uow.signal_waits.append((wait_id, inst.workflow_id, inst.id, st.step_id, wait.name, match))
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
                        )
                    ),
                    msg_id=f"waitreg:{wait_id}",
                    headers=inject_headers({}),
                )
            )
        st.status = "waiting"
        st.waiting_since = now_utc()
        st.reason = {
            "code": "waiting_for_signals",
            "signals": names,
            "missing": [n for n in names if n not in got],
            "message": "waiting for signals " + ", ".join(n for n in names if n not in got),
        }
        self.uow.touch_step(st)
        run_spans.waiting(self, inst, now_utc(), st.reason, st.step_id)
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

    # ------------------------------------------------------------------ concurrency permits

    def acquire_permits(self, inst: InstanceState, st: StepState) -> bool:
        """Take the step's slot under ``step_concurrency`` and each named tag, oldest waiter first."""
        compiled = self.graph(inst)
        step = compiled.step(st.step_id)
        limit = compiled.definition.step_concurrency
        since = st.waiting_since or now_utc()
        if limit:
            older = sum(
                1
                for w_since, _i, w in self.state.waiting_steps()
                if w is not st
                and w_since < since
                and w.reason
                and w.reason.get("code") == "waiting_for_step_concurrency"
            )
            if self.state.leaf_active + older >= limit:
                return self._wait_for_permit(
                    inst,
                    st,
                    {
                        "code": "waiting_for_step_concurrency",
                        "limit": limit,
                        "in_use": self.state.leaf_active,
                        "message": f"waiting for a step slot: step_concurrency {self.state.leaf_active}/{limit} in use",
                    },
                )
        for tag in step.concurrency_tags:
            ts = self.state.tags.get(tag)
            if ts is None or ts.limit is None:
                continue
            older = sum(
                1
                for w_since, _wf, w_inst, w_step in ts.waiters
                if w_since < since and not (w_inst == inst.id and w_step == st.step_id)
            )
            if ts.in_use + older >= ts.limit:
                return self._wait_for_permit(
                    inst,
                    st,
                    {
                        "code": "waiting_for_permit",
                        "tag": tag,
                        "limit": ts.limit,
                        "in_use": ts.in_use,
                        "message": f"waiting for tag permit {tag} ({ts.in_use}/{ts.limit} held)",
                    },
                )
        # Acquired: leave every waiter list.
        for tag in step.concurrency_tags:
            ts = self.state.tags.get(tag)
            if ts is not None:
                before = len(ts.waiters)
                ts.waiters = [w for w in ts.waiters if not (w[2] == inst.id and w[3] == st.step_id)]
                if len(ts.waiters) != before:
                    self.uow.waiters_del.append((tag, inst.id, st.step_id))
        if st.status == "waiting":
            st.waiting_since = None
        return True

    def _wait_for_permit(self, inst: InstanceState, st: StepState, reason: dict[str, Any]) -> bool:
        first = st.status != "waiting" or not st.reason or st.reason.get("code") != reason["code"]
        if st.waiting_since is None:
            st.waiting_since = now_utc()
        st.status = "waiting"
        st.reason = reason
        self.uow.touch_step(st)
        tag = reason.get("tag")
        if tag is not None:
            ts = self.state.tags[tag]
            if not any(w[2] == inst.id and w[3] == st.step_id for w in ts.waiters):
                ts.waiters.append((st.waiting_since, inst.workflow_id, inst.id, st.step_id))
                ts.waiters.sort(key=lambda w: w[0])
                self.uow.waiters_add.append((tag, inst.workflow_id, inst.id, st.step_id, st.waiting_since))
        if first:
            run_spans.waiting(self, inst, now_utc(), reason, st.step_id)
            self.note(
                inst,
                "step_waiting",
                f"step {st.step_id} {reason['message']}",
                step_id=st.step_id,
                details=reason,
            )
        return False

    def record_permits(self, inst: InstanceState, st: StepState, tags: list[str], attempt_id: str) -> None:
        self.state.leaf_active += 1
        for tag in tags:
            ts = self.state.tags.get(tag)
            if ts is not None and ts.limit is not None:
                ts.in_use += 1
                self.uow.permits_add.append((tag, attempt_id, inst.workflow_id, inst.id, st.step_id))

    def release_permits(self, inst: InstanceState, st: StepState, *, attempt_id: str | None) -> None:
        """The attempt ended (or the waiting step went away): free its slots and wake who waits."""
        compiled = self.graph(inst)
        step = compiled.step(st.step_id)
        for tag in step.concurrency_tags:
            ts = self.state.tags.get(tag)
            if ts is None:
                continue
            if attempt_id is not None and ts.limit is not None:
                ts.in_use = max(0, ts.in_use - 1)
                self.uow.permits_del.append((tag, attempt_id))
            if attempt_id is None:
                before = len(ts.waiters)
                ts.waiters = [w for w in ts.waiters if not (w[2] == inst.id and w[3] == st.step_id)]
                if len(ts.waiters) != before:
                    self.uow.waiters_del.append((tag, inst.id, st.step_id))
            # Wake the oldest waiters of other workflows; this workflow's are retried after each message.
            for _since, wf, _i, _s in ts.waiters[: max(1, (ts.limit or 0) - ts.in_use)]:
                if wf != inst.workflow_id:
                    self.uow.nudges.add(wf)
        if attempt_id is not None:
            self.state.leaf_active = max(0, self.state.leaf_active - 1)
            # Only a limited slot can have waiters worth retrying.
            if step.concurrency_tags or compiled.definition.step_concurrency:
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
        reason = inst.reason.get("code") if inst.reason else None
        self.uow.progress[inst.id] = InstanceProgress(
            workflow_id=inst.workflow_id,
            instance_id=inst.id,
            status=inst.status,
            reason=reason,
            at=time.time(),
        )
