"""loop: the step's body as child runs, one after the other, while ``while`` holds.

``while`` is checked before each iteration and sees ``iteration.index`` and the previous iteration's
``iteration.outputs``; at most ``max_iterations`` iterations run. The step's outputs are
``{iterations, last}``. A failed iteration fails the step.
"""

from __future__ import annotations

from typing import Any

from legato.core.progress import LoopProgress
from legato.scheduler.child_steps.context import ChildEnded, ChildStepContext, child_key
from legato.scheduler.child_steps.outcome import NOTHING, Fail, Outcome, StartInline, Succeed, outcome
from legato.sel import SelError


class LoopRuntime:
    """Decides a loop step: run the next iteration or end, after each one."""

    kind = "loop"

    def start(self, ctx: ChildStepContext) -> Outcome:
        """Check ``while`` for the first iteration."""
        prog = LoopProgress(index=0, max=ctx.config["max_iterations"])
        decided = self._next(ctx, prog)
        return outcome(*decided.decisions, progress=prog)

    def resume(self, ctx: ChildStepContext) -> Outcome:
        """Never asked: a loop's outcomes do not resume."""
        return NOTHING

    def on_child_ended(self, ctx: ChildStepContext, child: ChildEnded) -> Outcome:
        """An iteration ended: fail with it, or remember its outputs and decide the next."""
        prog = ctx.progress
        assert isinstance(prog, LoopProgress)
        if child.status != "succeeded":
            return outcome(
                Fail(f"loop iteration {child.index} {child.status}: {child.error or ''}".rstrip(": "))
            )
        prog.last = child.outputs
        prog.index = (child.index or 0) + 1
        return self._next(ctx, prog)

    def _next(self, ctx: ChildStepContext, prog: LoopProgress) -> Outcome:
        env = ctx.graph.loop_env(ctx.step_id, ctx.env(), prog.index, prog.last)
        try:
            go_on = ctx.graph.loop_should_continue(ctx.step_id, env)
        except (SelError, ValueError) as exc:
            return outcome(Fail(f"loop.while: {exc}", stop_children=False))
        index = prog.index
        if not go_on:
            return outcome(
                Succeed(
                    {"iterations": index, "last": prog.last},
                    f"step {ctx.step_id}: loop ended after {index} iterations",
                    publish_signals=False,
                )
            )
        key = child_key(ctx, prog, index, "loop")
        return outcome(StartInline(key, index, dict(ctx.typed_params()), {"iteration": index}))


def iteration_view(prog: LoopProgress, index: int | None) -> dict[str, Any]:
    """``iteration`` as an inline loop iteration's expressions see it."""
    return {"index": index or 0, "outputs": prog.last}
