"""A plugin's StepType run by the executor's PluginRunner: outputs, named failures, a plugin that
raises, and one that may not be cancelled."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from legato.core.step_types import (
    InstalledStepTypes,
    PluginStepFailed,
    StepCall,
    StepType,
    check_config,
    check_step_type,
)
from legato.executor.capture import CapturedOutput
from legato.executor.runners.plugin import PluginRunner
from legato.executor.step_runner import StepContext, StepFailed
from legato.protocol.messages import JSONValue, WorkItem


class Config(msgspec.Struct, frozen=True):
    n: int
    mode: str = "ok"


finished: list[int] = []


async def run(call: StepCall[Config]) -> dict[str, Any]:
    if call.config.mode == "fail":
        raise PluginStepFailed("named failure", outputs={"n": call.config.n})
    if call.config.mode == "raise":
        raise ZeroDivisionError("division by zero")
    if call.config.mode == "slow":
        await asyncio.sleep(0.3)
        finished.append(call.config.n)
    if call.config.mode == "not-json":
        return {"x": object()}
    return {"double": call.config.n * 2, "step": call.step_id, "p": call.params.get("p")}


def ctx(config: dict[str, JSONValue]) -> StepContext:
    item = WorkItem(
        attempt_id="a1",
        workflow_id="w",
        instance_id="i",
        step_id="s",
        attempt=1,
        step_type="t",
        config=config,
        params={"p": 1},
        reply_subject="r",
    )
    return StepContext(item=item, output=CapturedOutput(), kill_grace=1.0)


async def test_outputs_and_failures() -> None:
    runner = PluginRunner(StepType(name="t", config=Config, run=run))
    assert (await runner.run(ctx({"n": 2}))).outputs == {"double": 4, "step": "s", "p": 1}
    with pytest.raises(StepFailed) as failed:
        await runner.run(ctx({"n": 2, "mode": "fail"}))
    assert (failed.value.error, failed.value.outputs) == ("named failure", {"n": 2})
    with pytest.raises(StepFailed, match=r"^plugin 't' raised ZeroDivisionError: division by zero$"):
        await runner.run(ctx({"n": 2, "mode": "raise"}))
    with pytest.raises(StepFailed, match="returned outputs that are not JSON"):
        await runner.run(ctx({"n": 2, "mode": "not-json"}))
    with pytest.raises(StepFailed, match=r"^invalid step config: config.n: expected int, got str$"):
        await runner.run(ctx({"n": "x"}))


@pytest.mark.parametrize(("cancellable", "ran_to_the_end"), [(True, []), (False, [7])])
async def test_cancel_stops_a_cancellable_plugin_and_lets_the_other_finish(
    cancellable: bool, ran_to_the_end: list[int]
) -> None:
    finished.clear()
    runner = PluginRunner(StepType(name="t", config=Config, run=run, cancellable=cancellable))
    task = asyncio.create_task(runner.run(ctx({"n": 7, "mode": "slow"})))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished == ran_to_the_end


def test_malformed_plugins_are_reported_not_loaded() -> None:
    good = StepType(name="t", config=Config, run=run)
    assert check_step_type("t", good) is None
    assert check_step_type("u", good) == "the entry point is named 'u' but its StepType is named 't'"
    assert (
        check_step_type("sql", StepType(name="sql", config=Config, run=run))
        == "'sql' is a built-in step type"
    )
    assert check_step_type("t", object()) is not None
    installed = InstalledStepTypes(types={"t": good}, broken={"bad": "ImportError: no module named x"})
    assert installed.unknown_type("bad") == (
        "plugin step type 'bad' is installed but cannot be loaded: ImportError: no module named x"
    )
    assert installed.names()[-1] == "t"
    assert [(i.path, i.message) for i in check_config(good, {"mode": "x"}, "steps[2]")] == [
        ("steps[2].n", "required")
    ]
