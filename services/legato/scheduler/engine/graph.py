"""Walking a run's step graph: which steps are ready, skipped or failed before any attempt."""

from __future__ import annotations

from legato.core.reasons import ConditionFalse, Reason, StepFailed, UpstreamFailed, code_of, encode_reason
from legato.scheduler.engine.base import EngineBase
from legato.scheduler.state import InstanceState, StepState, now_utc
from legato.sel import SelError


class StepGraph(EngineBase):
    """Walking a run's step graph: which steps are ready, skipped or failed before any attempt."""

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
