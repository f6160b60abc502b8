"""subworkflow: one child run of another workflow (pinned version or the active one).

The child does not queue under its workflow's run strategy unless ``apply_run_strategy: true``; its
outputs become the step's outputs (with its ``instance_id``). Stopping or killing the parent stops
the child.
"""

from __future__ import annotations

from legato.core.progress import SubworkflowProgress
from legato.scheduler.child_steps.context import ChildEnded, ChildStepContext, child_key, start_child_run
from legato.scheduler.child_steps.outcome import NOTHING, Fail, Outcome, StartRemote, Succeed, outcome


class SubworkflowRuntime:
    """Decides a subworkflow step: start its child run, end with it."""

    kind = "subworkflow"

    def start(self, ctx: ChildStepContext) -> Outcome:
        """Start the child run through its workflow's actor."""
        key = child_key(ctx, ctx.progress, None, "subworkflow")
        start = start_child_run(ctx, ctx.config, key, None)
        progress = SubworkflowProgress(workflow=ctx.config["workflow"], child=start.instance_id)
        return outcome(StartRemote(start), progress=progress)

    def resume(self, ctx: ChildStepContext) -> Outcome:
        """Never asked: a subworkflow's outcomes do not resume."""
        return NOTHING

    def on_child_ended(self, ctx: ChildStepContext, child: ChildEnded) -> Outcome:
        """The child run ended: the step ends as it did."""
        prog = ctx.progress
        assert isinstance(prog, SubworkflowProgress)
        if child.child_id is not None and prog.child != child.child_id:
            return NOTHING  # an older child (before a restart)
        if child.status == "succeeded":
            return outcome(
                Succeed(
                    {**child.outputs, "instance_id": prog.child},
                    f"step {ctx.step_id}: child run {child.child_id} succeeded",
                )
            )
        return outcome(Fail(f"child run {child.child_id} {child.status}: {child.error or ''}".rstrip(": ")))
