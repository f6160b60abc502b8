"""``sleep``: waits ``config.duration`` seconds; cancellable like any other step.

A retry of a sleep that was interrupted (its executor lost) carries ``until``, the epoch time at which
the first attempt would have woken: it sleeps only the time left.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import msgspec

from legato.executor.step_runner import StepContext, StepResult, parse_config


class SleepConfig(msgspec.Struct, frozen=True):
    """A ``sleep`` step's config: seconds to sleep, or until a time."""

    duration: Annotated[float, msgspec.Meta(ge=0)]
    until: float | None = None


class SleepRunner:
    """Runs a ``sleep`` step: waits, cancellable."""

    step_type = "sleep"

    async def run(self, ctx: StepContext) -> StepResult:
        config = parse_config(ctx.item.config, SleepConfig)
        seconds = config.duration
        if config.until is not None:
            seconds = max(0.0, min(seconds, config.until - time.time()))
        await asyncio.sleep(seconds)
        return StepResult()
