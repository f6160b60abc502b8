"""What the API reads about a workflow on every start, cached: compiled definitions and activation.

Compiled definitions are immutable per ``(workflow, version)``, so they are kept until the cache is
full. A workflow's activation (active, active version) is kept for a second: starts come in bursts, and
the scheduler re-checks activation when it applies a start. Calls that change a workflow ``forget`` it.
"""

from __future__ import annotations

import time

import asyncpg

from legato.core import CompiledWorkflow, compile_workflow, definition_from_json
from legato.trigger import registry

ACTIVATION_SECONDS = 1.0
MAX_COMPILED = 1024
MAX_ACTIVATIONS = 10_000


class WorkflowCache:
    """Compiled definitions by ``(workflow, version)`` and each workflow's activation, for the API."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._compiled: dict[tuple[str, int], CompiledWorkflow] = {}
        self._activation: dict[str, tuple[float, bool, int]] = {}

    async def compiled(self, conn: asyncpg.Connection, workflow_id: str, version: int) -> CompiledWorkflow:
        """The compiled definition of one version (``not_found`` when the version does not exist)."""
        key = (workflow_id, version)
        found = self._compiled.get(key)
        if found is None:
            text = await registry.load_definition(conn, workflow_id, version)
            found = compile_workflow(definition_from_json(text.encode()))
            if len(self._compiled) > MAX_COMPILED:
                self._compiled.clear()
            self._compiled[key] = found
        return found

    async def compiled_version(self, workflow_id: str, version: int) -> CompiledWorkflow:
        """``compiled`` with a connection of its own, only when the version is not cached yet."""
        found = self._compiled.get((workflow_id, version))
        if found is None:
            async with self.pool.acquire() as conn:
                found = await self.compiled(conn, workflow_id, version)
        return found

    async def activation(self, workflow_id: str) -> tuple[bool, int]:
        """Whether the workflow is active and its active version, read at most once a second."""
        now = time.monotonic()
        cached = self._activation.get(workflow_id)
        if cached is None or now - cached[0] > ACTIVATION_SECONDS:
            async with self.pool.acquire() as conn:
                row = await registry.get_workflow_row(conn, workflow_id)
            cached = (now, row["active"], row["active_version"])
            self._activation[workflow_id] = cached
            if len(self._activation) > MAX_ACTIVATIONS:
                self._activation.clear()
        return cached[1], cached[2]

    def forget(self, workflow_id: str) -> None:
        """The workflow changed (pushed, (de)activated, archived, deleted): read its activation again."""
        self._activation.pop(workflow_id, None)
