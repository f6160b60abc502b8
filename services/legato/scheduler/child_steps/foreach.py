"""foreach: the step's body (or a subworkflow) once per item, as child runs, ``concurrency`` at a time.

``over`` is evaluated once when the step starts (with the run's start time as ``now()``, so
re-evaluating it after a scheduler restart gives the same items). Iterations are created lazily, one
at a time as earlier ones end: a 100,000-item foreach holds at most ``concurrency`` iterations in
memory and in flight, and has written rows only for the iterations it started. When the last one
ends, the engine collects the iterations' outputs from Postgres (item order) and calls ``complete``.
``on_failure``: ``fail`` stops the others at once, ``finish_others_then_fail`` runs every remaining
iteration and then fails, ``ignore`` succeeds. A restart re-runs only the failed iterations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from legato.core import ForeachStep, ParamError
from legato.core.progress import ForeachProgress
from legato.scheduler.child_steps.context import ChildEnded, ChildStepContext, child_key, start_child_run
from legato.scheduler.child_steps.outcome import (
    NOTHING,
    Collect,
    Decision,
    Fail,
    Note,
    Outcome,
    StartInline,
    StartRemote,
    StopChildren,
    Succeed,
    outcome,
)
from legato.sel import SelError

FAILED_ITEMS_SHOWN = 100  # iteration failures noted on the timeline; the rest are only counted


class ForeachRuntime:
    """Decides a foreach step: which iteration starts next, what an ended one changes, how it ends."""

    kind = "foreach"

    def start(self, ctx: ChildStepContext) -> Outcome:
        """Evaluate the items and begin (or, after a failure, re-run only the failed iterations)."""
        try:
            items = ctx.items()
        except (ParamError, SelError, ValueError) as exc:
            return outcome(Fail(f"foreach.over: {exc}", stop_children=False))
        prog = ctx.progress
        if isinstance(prog, ForeachProgress) and prog.failed_items and prog.total == len(items):
            prog.retry = sorted(prog.failed_items)
            prog.failed = 0
            prog.failed_items = []
            prog.run += 1
            prog.stopping = False
            note = Note(
                "foreach_restarted", f"step {ctx.step_id}: re-running {len(prog.retry)} failed iterations"
            )
            return outcome(note, progress=prog, resume=True)
        prog = ForeachProgress(
            total=len(items),
            concurrency=int(ctx.config.get("concurrency") or 20),
            on_failure=ctx.config.get("on_failure") or "finish_others_then_fail",
            as_=ctx.config.get("as") or "item",
        )
        note = Note(
            "foreach_started",
            f"step {ctx.step_id}: {len(items)} iterations, concurrency {prog.concurrency}",
        )
        return outcome(note, progress=prog, resume=True)

    def resume(self, ctx: ChildStepContext) -> Outcome:
        """The next iteration to start while below the concurrency; ``Collect`` once none is left."""
        prog = ctx.progress
        assert isinstance(prog, ForeachProgress)
        if prog.stopping is not True and prog.running < prog.concurrency:
            index: int | None = None
            if prog.retry:
                index = prog.retry.pop(0)
            elif prog.next < prog.total:
                index = prog.next
                prog.next += 1
            if index is not None:
                prog.running += 1
                return self._start_iteration(ctx, prog, index)
        if prog.running == 0 and (prog.stopping is True or (not prog.retry and prog.next >= prog.total)):
            return outcome(Collect())
        return NOTHING

    def _start_iteration(self, ctx: ChildStepContext, prog: ForeachProgress, index: int) -> Outcome:
        key = child_key(ctx, prog, index, "foreach")
        step = ctx.graph.step(ctx.step_id)
        assert isinstance(step, ForeachStep)
        if step.foreach.subworkflow is not None:
            env = ctx.graph.foreach_env(ctx.step_id, ctx.env(), index, ctx.items()[index])
            try:
                target = ctx.graph.foreach_subworkflow(ctx.step_id, env)
            except (ParamError, SelError) as exc:
                return self._iteration_ended(ctx, prog, index, "failed", f"subworkflow params: {exc}")
            start = start_child_run(ctx, target, key, index)
            prog.children[str(index)] = [target["workflow"], start.instance_id]
            return outcome(StartRemote(start), resume=True)
        typed = {**ctx.typed_params(), **item_params(prog, ctx.items(), index)}
        return outcome(StartInline(key, index, typed, {"index": index}), resume=True)

    def on_child_ended(self, ctx: ChildStepContext, child: ChildEnded) -> Outcome:
        """An iteration ended: count it, stop the others if it failed under ``fail``, start the next."""
        prog = ctx.progress
        assert isinstance(prog, ForeachProgress)
        if child.index is None:
            return NOTHING
        live = prog.children.get(str(child.index))
        if child.child_id is not None and (live[1] if live else None) != child.child_id:
            return NOTHING  # an older child of this iteration (before a restart)
        return self._iteration_ended(ctx, prog, child.index, child.status, child.error)

    def _iteration_ended(
        self, ctx: ChildStepContext, prog: ForeachProgress, index: int, status: str, error: str | None
    ) -> Outcome:
        prog.running = max(0, prog.running - 1)
        prog.children.pop(str(index), None)
        decisions: list[Decision] = []
        if status == "succeeded":
            prog.succeeded += 1
        elif prog.on_failure == "ignore":
            prog.ignored += 1
            prog.failed_items.append(index)
        else:
            prog.failed += 1
            prog.failed_items.append(index)
            if len(prog.failed_items) <= FAILED_ITEMS_SHOWN:
                decisions.append(
                    Note(
                        "iteration_failed",
                        f"step {ctx.step_id}: iteration {index} {status}: {error or ''}",
                        {"index": index},
                    )
                )
            if prog.on_failure == "fail" and prog.stopping is not True:
                prog.stopping = True
                decisions.append(StopChildren(f"iteration {index} failed (on_failure: fail)"))
        return outcome(*decisions, resume=True)

    def complete(self, ctx: ChildStepContext, results: list[Any]) -> Outcome:
        """Every iteration ended and ``results`` holds their outputs (item order): the step ends."""
        prog = ctx.progress
        assert isinstance(prog, ForeachProgress)
        outputs = {
            "iterations": results,
            "count": prog.total,
            "succeeded": prog.succeeded,
            "failed": prog.failed + prog.ignored,
        }
        if prog.failed:
            error = (
                f"{prog.failed} of {prog.total} iterations failed (first: {sorted(prog.failed_items)[:10]})"
            )
            return outcome(Fail(error, outputs=outputs))
        message = f"step {ctx.step_id}: {prog.succeeded} iterations succeeded" + (
            f", {prog.ignored} failed and ignored" if prog.ignored else ""
        )
        return outcome(Succeed(outputs, message))


def item_params(prog: ForeachProgress, items: Sequence[Any], index: int) -> dict[str, Any]:
    """What an inline iteration adds to its parent's params: its item (under ``as``) and its index."""
    return {prog.as_: items[index], "index": index}
