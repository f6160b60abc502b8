"""A run's life: created, queued, started (params, run timeout, root steps) and finished."""

from __future__ import annotations

from datetime import timedelta

from opentelemetry.trace import SpanContext

from legato.core import ParamError
from legato.core.reasons import BadParams, Queued, Reason, encode_reason
from legato.protocol.messages import StartRun
from legato.scheduler import run_spans
from legato.scheduler.engine.base import EngineBase, jsonable
from legato.scheduler.state import InstanceState, from_epoch, now_utc
from legato.sel import SelError
from legato.telemetry.metrics import metrics


class RunLifecycle(EngineBase):
    """A run's life: created, queued, started (params, run timeout, root steps) and finished."""

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
