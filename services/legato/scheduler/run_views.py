"""What a workflow's runs look like to their expressions: read-only views over the actor's state.

The graph a run executes (its workflow's, or a step's body), its params typed, the environment its
steps' expressions are evaluated in (``steps.<id>`` read live, ``iteration`` in a loop body, the
enclosing steps inside a body) and a foreach's items, evaluated once per activation. Nothing here
changes a run; the engine holds one ``RunViews`` per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from legato.core import CompiledWorkflow, EvalEnv, InstanceInfo, from_json_value
from legato.core.progress import ForeachProgress, LoopProgress
from legato.scheduler.child_steps.foreach import item_params
from legato.scheduler.child_steps.loop import iteration_view
from legato.scheduler.state import InstanceState, StepState, WorkflowState

CompiledLookup = Callable[[str, int], CompiledWorkflow]


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


class RunViews:
    """Read-only views of one workflow's runs, for expressions and for the child step runtimes."""

    def __init__(
        self,
        state: WorkflowState,
        compiled: CompiledLookup,
        items_cache: dict[tuple[str, str], Any] | None = None,
    ) -> None:
        self._state = state
        self._compiled = compiled
        # foreach items per (run, step), evaluated once per activation (ranges stay lazy).
        self.items_cache: dict[tuple[str, str], Any] = items_cache if items_cache is not None else {}

    def graph(self, inst: InstanceState) -> CompiledWorkflow:
        """The step graph a run executes: the workflow's, or the body of one of its steps."""
        compiled = self._compiled(inst.workflow_id, inst.version)
        if inst.body_path:
            for part in inst.body_path.split("/"):
                compiled = compiled.body(part)
        return compiled

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
            inst.typed_params = self._inline_params(inst)
        if inst.typed_params is None:
            compiled = self._compiled(inst.workflow_id, inst.version)
            specs = compiled.definition.params
            inst.typed_params = {
                k: (from_json_value(v, specs[k].type) if k in specs else v) for k, v in inst.params.items()
            }
        return inst.typed_params

    def env(self, inst: InstanceState, signals: Mapping[str, Any] | None = None) -> EvalEnv:
        info = self.instance_info(inst)
        iteration = None
        outer: Mapping[str, Any] | None = None
        if inst.body_path:
            outer, iteration = self._parent_view(inst)
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

    def foreach_items(self, inst: InstanceState, step_id: str) -> Any:
        """A foreach's items, evaluated once per activation with the run's start time as ``now()``."""
        key = (inst.id, step_id)
        items = self.items_cache.get(key)
        if items is None:
            env = self.env(inst)
            env.now = inst.started_at or inst.created_at
            items = self.graph(inst).foreach_items(step_id, env)
            self.items_cache[key] = items
        return items

    def _inline_params(self, child: InstanceState) -> dict[str, Any]:
        """Typed params of an inline child after a reload: the parent's, plus its item and index."""
        parent = self._state.instances.get(child.parent_instance_id or "")
        if parent is None:
            return dict(child.params)
        typed = dict(self.typed_params(parent))
        st = parent.steps.get(child.parent_step_id or "")
        index = child.parent_iteration
        if st is not None and isinstance(st.progress, ForeachProgress) and index is not None:
            typed.update(item_params(st.progress, self.foreach_items(parent, st.step_id), index))
        return typed

    def _parent_view(self, child: InstanceState) -> tuple[Mapping[str, Any], dict[str, Any] | None]:
        """What an inline child sees of its parent: the enclosing steps, and ``iteration`` in a loop body."""
        parent = self._state.instances.get(child.parent_instance_id or "")
        if parent is None:
            return {}, None
        outer = self.env(parent).steps
        st = parent.steps.get(child.parent_step_id or "")
        if st is not None and isinstance(st.progress, LoopProgress):
            return outer, iteration_view(st.progress, child.parent_iteration)
        return outer, None
