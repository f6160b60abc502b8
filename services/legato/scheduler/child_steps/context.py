"""What a child step runtime sees: a read-only view of its run and step, and the child runs' keys.

The engine builds a ``ChildStepContext`` for each call. The runtime owns the step's ``progress`` record
(it updates it in place, or returns a new one in its ``Outcome``); everything else it reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from legato.core import CompiledWorkflow, EvalEnv, to_json_value
from legato.core.progress import ForeachProgress, Progress
from legato.protocol.ids import instance_id_for
from legato.protocol.messages import ParentRef, StartRun, TriggerInfo

MAX_DEPTH = 10  # nesting of child runs (a workflow that calls itself must end somewhere)


@dataclass(frozen=True, slots=True)
class RunView:
    """The parent run, as far as its child steps need it."""

    id: str
    workflow_id: str
    run_number: int
    depth: int  # how many child runs deep this run is (0 for a top-level run)


@dataclass(frozen=True, slots=True)
class ChildStepContext:
    """One call into a child step runtime: its run, its step and lazy views of what expressions see."""

    run: RunView
    step_id: str
    graph: CompiledWorkflow  # the graph the step belongs to
    progress: Progress | None  # the step's progress record, owned by the runtime
    config: Mapping[str, Any]  # the step's resolved config (on ``start``; empty afterwards)
    env: Callable[[], EvalEnv]  # the run's expression environment, built when asked
    typed_params: Callable[[], dict[str, Any]]  # the run's params, typed
    items: Callable[[], Sequence[Any]]  # a foreach's items, evaluated once per activation


@dataclass(frozen=True, slots=True)
class ChildEnded:
    """A child run of the step ended (``child_id`` is None for an inline child)."""

    index: int | None
    status: str
    outputs: dict[str, Any]
    error: str | None
    child_id: str | None = None


def depth_of(trigger: Mapping[str, Any]) -> int:
    """How many child runs deep a run is, from its trigger."""
    depth = trigger.get("depth", 0)
    return depth if isinstance(depth, int) else 0


def json_params(values: Mapping[str, Any]) -> dict[str, Any]:
    """Typed params as they are stored and sent."""
    return {k: to_json_value(v) for k, v in values.items()}


def child_key(ctx: ChildStepContext, progress: Progress | None, index: int | None, kind: str) -> str:
    """The trigger key of a child run: one per run number, restart of the step and iteration."""
    run = progress.run if isinstance(progress, ForeachProgress) else 1
    suffix = "" if index is None else f":{index}"
    return f"{kind}:{ctx.run.id}:{ctx.step_id}{suffix}:r{ctx.run.run_number}.{run}"


def start_child_run(
    ctx: ChildStepContext, target: Mapping[str, Any], key: str, index: int | None
) -> StartRun:
    """The start of a child run of ``target['workflow']`` (a subworkflow, or a foreach iteration of one)."""
    workflow = str(target["workflow"])
    version = target.get("version")
    return StartRun(
        workflow_id=workflow,
        trigger_key=key,
        instance_id=instance_id_for(workflow, key),
        trigger=TriggerInfo(
            kind="subworkflow" if index is None else "foreach",
            id=ctx.step_id,
            details={
                "parent": ctx.run.id,
                "parent_workflow": ctx.run.workflow_id,
                "step": ctx.step_id,
                "depth": ctx.run.depth + 1,
                **({} if index is None else {"index": index}),
            },
        ),
        params=json_params(dict(target.get("params") or {})),
        version=version if isinstance(version, int) else None,
        parent=ParentRef(
            instance_id=ctx.run.id, workflow_id=ctx.run.workflow_id, step_id=ctx.step_id, iteration=index
        ),
        apply_run_strategy=bool(target.get("apply_run_strategy", False)),
    )
