"""Where a step's processes run: a fresh folder per attempt (its environment: ``step_env``)."""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from legato.protocol.messages import WorkItem


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
