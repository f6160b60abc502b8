"""Where a step's processes run: a fresh folder per attempt, and the environment they see."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from legato.executor.step import StepFailed
from legato.protocol.messages import JSONValue, WorkItem


@dataclass(frozen=True)
class Workspace:
    """``root/work`` is the step's cwd; files the executor exchanges with the step live beside it."""

    root: Path

    @property
    def cwd(self) -> Path:
        return self.root / "work"

    @property
    def outputs_path(self) -> Path:
        return self.root / "outputs"

    @property
    def result_path(self) -> Path:
        return self.root / "result.json"


@asynccontextmanager
async def attempt_workspace(item: WorkItem) -> AsyncIterator[Workspace]:
    """A temporary folder for one attempt, removed afterwards whatever the step left in it."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", item.attempt_id)[:40]
    root = Path(tempfile.mkdtemp(prefix=f"legato-{safe}-"))
    try:
        ws = Workspace(root)
        ws.cwd.mkdir()
        yield ws
    finally:
        # A step may leave a big tree behind: remove it off the event loop (it completes even if
        # this await is cancelled).
        await asyncio.to_thread(shutil.rmtree, root, True)


def param_env_name(name: str) -> str:
    """``LEGATO_PARAM_<NAME>``: upper-cased, characters an env name cannot hold become ``_``."""
    return "LEGATO_PARAM_" + re.sub(r"[^A-Z0-9_]", "_", name.upper())


def env_value(value: JSONValue) -> str:
    """Strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def step_environment(
    item: WorkItem,
    *,
    outputs_path: Path | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The executor's environment plus the attempt's params and identity as ``LEGATO_*`` variables."""
    env = dict(os.environ if base is None else base)
    for name, value in item.params.items():
        env[param_env_name(name)] = env_value(value)
    env["LEGATO_PARAMS"] = json.dumps(item.params, separators=(",", ":"))
    env["LEGATO_WORKFLOW_ID"] = item.workflow_id
    env["LEGATO_INSTANCE_ID"] = item.instance_id
    env["LEGATO_RUN_ID"] = item.instance_id  # the same id by its user-facing name
    env["LEGATO_STEP_ID"] = item.step_id
    env["LEGATO_ATTEMPT"] = str(item.attempt)
    env["LEGATO_ATTEMPT_ID"] = item.attempt_id
    if outputs_path is not None:
        env["LEGATO_OUTPUTS"] = str(outputs_path)
    for key, value in env.items():
        if "\0" in value or "\0" in key:
            raise StepFailed(f"environment variable {key} would contain a NUL byte; params cannot carry one")
    return env
