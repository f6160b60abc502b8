"""A step type from a plugin (``legato.core.step_types``) as a ``StepRunner``.

The step's config is decoded into the plugin's schema again here (the scheduler evaluated its
templates), its runner is called with a :class:`StepCall`, and what it returns becomes the outputs.
``PluginStepFailed`` fails the attempt with its message; any other exception fails it naming the
plugin and the exception — the executor stays up. A plugin that is not cancellable is let finish when
the attempt is cancelled (timeout, stop, shutdown); its result is then dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import msgspec

from legato.core.step_types import PluginStepFailed, StepCall, StepType, explain
from legato.executor.step_runner import StepContext, StepFailed, StepResult
from legato.protocol.messages import JSONValue
from legato.telemetry import get_logger

log = get_logger("legato.executor")


class PluginRunner:
    """Runs one plugin's step type."""

    def __init__(self, step_type: StepType[Any]) -> None:
        self.plugin = step_type
        self.step_type = step_type.name

    async def run(self, ctx: StepContext) -> StepResult:
        item = ctx.item
        try:
            config = msgspec.convert(dict(item.config), self.plugin.config)
        except msgspec.ValidationError as exc:
            path, rule = explain(exc, "config")
            raise StepFailed(f"invalid step config: {path}: {rule}") from None
        call = StepCall(
            config=config,
            params=dict(item.params),
            workflow_id=item.workflow_id,
            instance_id=item.instance_id,
            step_id=item.step_id,
            attempt=item.attempt,
            attempt_id=item.attempt_id,
        )
        task = asyncio.ensure_future(self.plugin.run(call))
        try:
            outputs = await (task if self.plugin.cancellable else asyncio.shield(task))
        except asyncio.CancelledError:
            if not self.plugin.cancellable and not task.done():
                log.info("plugin_step_finishing_before_cancel", step_type=self.step_type)
                await asyncio.gather(task, return_exceptions=True)
            raise
        except PluginStepFailed as exc:
            raise StepFailed(exc.error, outputs=_json_outputs(exc.outputs, self.step_type)) from None
        except StepFailed:
            raise
        except Exception as exc:
            raise StepFailed(f"plugin {self.step_type!r} raised {type(exc).__name__}: {exc}") from None
        return StepResult(outputs=_json_outputs(outputs, self.step_type))


def _json_outputs(outputs: object, step_type: str) -> dict[str, JSONValue]:
    if outputs is None:
        return {}
    if not isinstance(outputs, Mapping):
        raise StepFailed(f"plugin {step_type!r} returned {type(outputs).__name__}, not a mapping of outputs")
    try:
        return msgspec.json.decode(msgspec.json.encode(dict(outputs)))  # type: ignore[no-any-return]
    except (TypeError, msgspec.EncodeError) as exc:
        raise StepFailed(f"plugin {step_type!r} returned outputs that are not JSON: {exc}") from None
