"""The child step runtimes decide alone: given a context, they return the decisions the engine applies."""

from __future__ import annotations

from typing import Any

from legato.core import CompiledWorkflow, EvalEnv, compile_workflow, parse_definition
from legato.core.progress import LoopProgress, Progress, SubworkflowProgress, encode_progress
from legato.scheduler.child_steps import RUNTIMES
from legato.scheduler.child_steps.context import ChildEnded, ChildStepContext, RunView
from legato.scheduler.child_steps.foreach import FAILED_ITEMS_SHOWN, ForeachRuntime
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

FOREACH = """
id: fan
params:
  n: {type: int, default: 5}
steps:
  - id: each
    type: foreach
    foreach:
      over: "range(params.n)"
      concurrency: 2
      on_failure: %s
      steps:
        - id: body
          type: noop
"""

LOOP = """
id: again
steps:
  - id: repeat
    type: loop
    loop:
      while: "iteration.index < 2"
      max_iterations: 5
      steps:
        - id: body
          type: noop
"""

SUBWORKFLOW = """
id: parent
steps:
  - id: call
    type: subworkflow
    subworkflow: {workflow: child-wf, params: {x: 1}}
"""


class Step:
    """One child step of a compiled workflow, called the way the engine calls it."""

    def __init__(self, source: str, step_id: str, params: dict[str, Any] | None = None) -> None:
        self.graph: CompiledWorkflow = compile_workflow(parse_definition(source))
        self.step_id = step_id
        self.params = params or {}
        self.progress: Progress | None = None
        self.runtime = RUNTIMES[self.graph.step(step_id).type]

    def ctx(self, config: dict[str, Any] | None = None) -> ChildStepContext:
        env = EvalEnv(params=self.params)
        return ChildStepContext(
            run=RunView("run-1", self.graph.definition.id, 1, 0),
            step_id=self.step_id,
            graph=self.graph,
            progress=self.progress,
            config=config or {},
            env=lambda: env,
            typed_params=lambda: dict(self.params),
            items=lambda: self.graph.foreach_items(self.step_id, env),
        )

    def take(self, outcome: Outcome) -> Outcome:
        if outcome.progress is not None:
            self.progress = outcome.progress
        return outcome

    def start(self) -> Outcome:
        resolved = self.graph.resolve_step(self.step_id, EvalEnv(params=self.params))
        return self.take(self.runtime.start(self.ctx(resolved.config)))

    def resume_all(self) -> list[Outcome]:
        """Resume until the runtime asks for nothing more (as the engine does while the step runs)."""
        out = []
        while True:
            outcome = self.take(self.runtime.resume(self.ctx()))
            out.append(outcome)
            if not outcome.resume:
                return out

    def ended(self, child: ChildEnded) -> Outcome:
        return self.take(self.runtime.on_child_ended(self.ctx(), child))


def started_indices(outcomes: list[Outcome]) -> list[int]:
    return [d.index for o in outcomes for d in o.decisions if isinstance(d, StartInline)]


def test_foreach_starts_up_to_its_concurrency_then_one_per_ended_iteration() -> None:
    step = Step(FOREACH % "finish_others_then_fail", "each", {"n": 5})
    first = step.start()
    assert isinstance(first.decisions[0], Note) and first.decisions[0].event == "foreach_started"
    assert first.resume
    assert started_indices(step.resume_all()) == [0, 1]
    ended = step.ended(ChildEnded(0, "succeeded", {}, None))
    assert ended.resume and not ended.decisions
    assert started_indices(step.resume_all()) == [2]
    for index in (1, 2):
        step.ended(ChildEnded(index, "succeeded", {}, None))
        step.resume_all()
    step.ended(ChildEnded(3, "succeeded", {}, None))
    assert step.resume_all()[-1].decisions == ()  # iteration 4 still runs: nothing to collect yet
    step.ended(ChildEnded(4, "succeeded", {}, None))
    assert step.resume_all()[-1].decisions == (Collect(),)


def test_an_inline_iteration_gets_its_item_and_index_and_a_key_per_restart() -> None:
    step = Step(FOREACH % "ignore", "each", {"n": 5})
    step.start()
    start = step.resume_all()[0].decisions[0]
    assert isinstance(start, StartInline)
    assert start.typed_params == {"n": 5, "item": 0, "index": 0}
    assert start.trigger_extra == {"index": 0}
    assert start.key == "foreach:run-1:each:0:r1.1"


def test_foreach_fail_stops_the_others_at_the_first_failure_and_fails_with_outputs() -> None:
    step = Step(FOREACH % "fail", "each", {"n": 5})
    step.start()
    step.resume_all()
    ended = step.ended(ChildEnded(1, "failed", {}, "boom"))
    assert [type(d) for d in ended.decisions] == [Note, StopChildren]
    assert ended.decisions[1] == StopChildren("iteration 1 failed (on_failure: fail)")
    assert step.resume_all()[-1].decisions == ()  # iteration 0 still has to end
    step.ended(ChildEnded(0, "stopped", {}, "stopped"))
    assert step.resume_all()[-1].decisions == (Collect(),)
    done = ForeachRuntime().complete(step.ctx(), [None] * 5)
    fail = done.decisions[0]
    assert isinstance(fail, Fail) and fail.stop_children
    assert fail.error == "2 of 5 iterations failed (first: [0, 1])"
    assert fail.outputs == {"iterations": [None] * 5, "count": 5, "succeeded": 0, "failed": 2}


def test_foreach_ignore_succeeds_and_a_restart_reruns_only_the_failed_iterations() -> None:
    step = Step(FOREACH % "ignore", "each", {"n": 3})
    step.start()
    step.resume_all()
    step.ended(ChildEnded(0, "failed", {}, "x"))
    step.resume_all()
    for index in (1, 2):
        step.ended(ChildEnded(index, "succeeded", {}, None))
        step.resume_all()
    done = ForeachRuntime().complete(step.ctx(), [None, {}, {}])
    assert done.decisions == (
        Succeed(
            {"iterations": [None, {}, {}], "count": 3, "succeeded": 2, "failed": 1},
            "step each: 2 iterations succeeded, 1 failed and ignored",
        ),
    )
    restarted = step.start()
    note = restarted.decisions[0]
    assert isinstance(note, Note) and note.event == "foreach_restarted"
    again = step.resume_all()
    assert started_indices(again) == [0]
    start = again[0].decisions[0]
    assert isinstance(start, StartInline) and start.key.endswith(":r1.2")


def test_foreach_notes_only_the_first_failures() -> None:
    step = Step(FOREACH % "finish_others_then_fail", "each", {"n": FAILED_ITEMS_SHOWN + 2})
    step.start()
    step.resume_all()
    notes = 0
    for index in range(FAILED_ITEMS_SHOWN + 2):
        notes += sum(isinstance(d, Note) for d in step.ended(ChildEnded(index, "failed", {}, "x")).decisions)
        step.resume_all()
    assert notes == FAILED_ITEMS_SHOWN


def test_a_bad_foreach_over_fails_the_step_without_children() -> None:
    step = Step(FOREACH % "fail", "each", {"n": "five"})
    outcome = step.runtime.start(step.ctx({}))
    fail = outcome.decisions[0]
    assert isinstance(fail, Fail) and not fail.stop_children
    assert fail.error.startswith("foreach.over: ")


def test_loop_runs_while_the_condition_holds_then_succeeds_with_the_last_outputs() -> None:
    step = Step(LOOP, "repeat")
    first = step.start()
    assert isinstance(first.progress, LoopProgress)
    assert encode_progress(first.progress) == {"kind": "loop", "index": 0, "max": 5, "last": {}}
    start = first.decisions[0]
    assert isinstance(start, StartInline) and start.trigger_extra == {"iteration": 0}
    second = step.ended(ChildEnded(0, "succeeded", {"body": {"a": 1}}, None))
    assert isinstance(second.decisions[0], StartInline) and second.decisions[0].index == 1
    last = step.ended(ChildEnded(1, "succeeded", {"body": {"a": 2}}, None))
    assert last.decisions == (
        Succeed(
            {"iterations": 2, "last": {"body": {"a": 2}}},
            "step repeat: loop ended after 2 iterations",
            publish_signals=False,
        ),
    )


def test_a_failed_loop_iteration_fails_the_loop() -> None:
    step = Step(LOOP, "repeat")
    step.start()
    failed = step.ended(ChildEnded(0, "failed", {}, "boom"))
    assert failed.decisions == (Fail("loop iteration 0 failed: boom"),)


def test_subworkflow_starts_one_child_and_ends_with_it() -> None:
    step = Step(SUBWORKFLOW, "call")
    started = step.start()
    remote = started.decisions[0]
    assert isinstance(remote, StartRemote)
    assert remote.start.workflow_id == "child-wf" and remote.start.params == {"x": 1}
    assert remote.start.trigger_key == "subworkflow:run-1:call:r1.1"
    assert remote.start.parent is not None and remote.start.parent.step_id == "call"
    assert step.progress == SubworkflowProgress(workflow="child-wf", child=remote.start.instance_id)
    assert encode_progress(step.progress) == {
        "kind": "subworkflow",
        "workflow": "child-wf",
        "child": remote.start.instance_id,
    }
    assert step.ended(ChildEnded(None, "succeeded", {}, None, child_id="older")).empty
    done = step.ended(ChildEnded(None, "succeeded", {"s": {"y": 2}}, None, child_id=remote.start.instance_id))
    assert done.decisions == (
        Succeed(
            {"s": {"y": 2}, "instance_id": remote.start.instance_id},
            f"step call: child run {remote.start.instance_id} succeeded",
        ),
    )
