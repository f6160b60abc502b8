"""Child steps: foreach, loop and subworkflow, which run child runs and join them back.

Each kind is a runtime (after Netflix Maestro's ``StepRuntime``): the engine calls ``start`` when the
step is ready and ``on_child_ended`` when one of its child runs ended, with a ``ChildStepContext``;
the runtime updates its own progress record and returns an ``Outcome`` (``outcome.py``), which the
engine applies. Runtimes never import or call the engine.

Inline children (foreach/loop bodies) belong to the same workflow and so to the same actor: they are
joined in memory. Children of other workflows report back with a ``ChildFinished`` message.
"""

from __future__ import annotations

from typing import Protocol

from legato.scheduler.child_steps.context import ChildEnded, ChildStepContext
from legato.scheduler.child_steps.foreach import ForeachRuntime
from legato.scheduler.child_steps.loop import LoopRuntime
from legato.scheduler.child_steps.outcome import Outcome
from legato.scheduler.child_steps.subworkflow import SubworkflowRuntime


class ChildStepRuntime(Protocol):
    """One kind of child step: what happens when it starts and when one of its child runs ends."""

    kind: str

    def start(self, ctx: ChildStepContext) -> Outcome:
        """The step is ready (its params resolved into ``ctx.config``): begin."""
        ...

    def on_child_ended(self, ctx: ChildStepContext, child: ChildEnded) -> Outcome:
        """One of the step's child runs ended."""
        ...

    def resume(self, ctx: ChildStepContext) -> Outcome:
        """Asked again after an outcome with ``resume`` was applied, while the step still runs."""
        ...


FOREACH = ForeachRuntime()
RUNTIMES: dict[str, ChildStepRuntime] = {
    "foreach": FOREACH,
    "loop": LoopRuntime(),
    "subworkflow": SubworkflowRuntime(),
}
