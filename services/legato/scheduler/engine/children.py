"""Child steps (foreach, loop, subworkflow): their runtimes' decisions applied, child runs joined back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, assert_never

from legato.bus.publisher import OutgoingMessage
from legato.core import ParamError
from legato.core.progress import kind_of
from legato.core.reasons import ParentStopped
from legato.protocol import encode
from legato.protocol.messages import ChildFinished
from legato.scheduler import run_spans
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
from legato.scheduler.engine.base import EngineBase, jsonable
from legato.scheduler.state import InstanceState, StepState, now_utc
from legato.sel import SelError
from legato.telemetry.tracing import inject_headers


class ChildSteps(EngineBase):
    """Child steps (foreach, loop, subworkflow): their runtimes' decisions applied, child runs joined back."""

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
