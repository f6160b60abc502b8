"""``sleep``: waits ``config.duration`` seconds; cancellable like any other step."""

from __future__ import annotations

import asyncio
from typing import Annotated

import msgspec

from legato.executor.step import StepContext, StepResult, parse_config


class SleepConfig(msgspec.Struct, frozen=True):
    duration: Annotated[float, msgspec.Meta(ge=0)]


class SleepRunner:
    step_type = "sleep"

    async def run(self, ctx: StepContext) -> StepResult:
        config = parse_config(ctx.item.config, SleepConfig)
        await asyncio.sleep(config.duration)
        return StepResult()
