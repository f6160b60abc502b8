"""One runner per step type; ``default_runners`` is what an executor runs."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from legato.core.step_types import installed_step_types
from legato.executor.runners.container import ContainerRunner
from legato.executor.runners.http import HttpRunner
from legato.executor.runners.noop import NoopRunner
from legato.executor.runners.notebook import NotebookRunner
from legato.executor.runners.plugin import PluginRunner
from legato.executor.runners.python import PythonRunner
from legato.executor.runners.shell import ShellRunner
from legato.executor.runners.sleep import SleepRunner
from legato.executor.runners.sql import SqlRunner
from legato.executor.step_runner import StepRunner
from legato.telemetry import get_logger

log = get_logger("legato.executor")


def default_runners(http_pool: ThreadPoolExecutor) -> Mapping[str, StepRunner]:
    """The runner of every built-in step type, by type."""
    runners: list[StepRunner] = [
        NoopRunner(),
        SleepRunner(),
        ShellRunner(),
        PythonRunner(),
        HttpRunner(http_pool),
        SqlRunner(),
        NotebookRunner(),
        ContainerRunner(),
    ]
    # Step types from installed plugins (entry points ``legato.step_types``); never a built-in name.
    installed = installed_step_types()
    runners.extend(PluginRunner(t) for t in installed.types.values())
    for name, why in installed.broken.items():
        log.warning("step_type_plugin_not_loaded", step_type=name, error=why)
    return {r.step_type: r for r in runners}


async def close_runners(runners: Mapping[str, StepRunner]) -> None:
    """Release what runners hold between attempts (the sql runner's connection pools), at shutdown."""
    for runner in runners.values():
        if isinstance(runner, SqlRunner):
            await runner.aclose()


__all__ = [
    "ContainerRunner",
    "HttpRunner",
    "NoopRunner",
    "PythonRunner",
    "ShellRunner",
    "SleepRunner",
    "SqlRunner",
    "default_runners",
]
