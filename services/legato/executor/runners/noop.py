"""``noop``: succeeds at once with no outputs (for wiring, joins and tests)."""

from __future__ import annotations

from legato.executor.step_runner import StepContext, StepResult


class NoopRunner:
    """Runs a ``noop`` step: nothing, successfully."""

    step_type = "noop"

    async def run(self, ctx: StepContext) -> StepResult:
        return StepResult()
