"""What the API reads about a workflow on every start, cached: compiled definitions and activation.

Compiled definitions are immutable per ``(workflow, version)``, so they are kept until the cache is
full. A workflow's activation (active, active version) is kept for a second: starts come in bursts, and
the scheduler re-checks activation when it applies a start. Calls that change a workflow ``forget`` it.

One read at a time per key: the starts that find an activation expired, or a version not compiled yet,
wait for the one read (and compile) the first of them began. Each used to make its own: at ~2,000
starts/s, each second's expiry sent a burst of them through the API's two pooled connections, ahead of
the start batches waiting for those connections (``tests/integration/test_workflow_cache.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from legato.core import CompiledWorkflow, compile_workflow, definition_from_json
from legato.trigger import registry

ACTIVATION_SECONDS = 1.0
MAX_COMPILED = 1024
MAX_ACTIVATIONS = 10_000

T = TypeVar("T")


class WorkflowCache:
    """Compiled definitions by ``(workflow, version)`` and each workflow's activation, for the API."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._compiled: dict[tuple[str, int], CompiledWorkflow] = {}
        self._activation: dict[str, tuple[float, bool, int]] = {}
        # The reads under way, by key: later callers wait for the same one.
        self._reading: dict[Any, asyncio.Future[Any]] = {}
        self.reads = 0  # activations and definitions read from Postgres (for tests and figures)

    async def compiled(self, conn: asyncpg.Connection, workflow_id: str, version: int) -> CompiledWorkflow:
        """The compiled definition of one version (``not_found`` when the version does not exist)."""
        key = (workflow_id, version)
        found = self._compiled.get(key)
        if found is None:
            self.reads += 1
            text = await registry.load_definition(conn, workflow_id, version)
            found = compile_workflow(definition_from_json(text.encode()))
            if len(self._compiled) > MAX_COMPILED:
                self._compiled.clear()
            self._compiled[key] = found
        return found

    async def compiled_version(self, workflow_id: str, version: int) -> CompiledWorkflow:
        """``compiled`` with a connection of its own, only when the version is not cached yet."""
        key = (workflow_id, version)
        found = self._compiled.get(key)
        if found is not None:
            return found

        async def read() -> CompiledWorkflow:
            async with self.pool.acquire() as conn:
                return await self.compiled(conn, workflow_id, version)

        return await asyncio.shield(self._start(("compiled", key), read))

    async def activation(self, workflow_id: str) -> tuple[bool, int]:
        """Whether the workflow is active and its active version, read at most once a second."""
        cached = self._activation.get(workflow_id)
        if cached is not None and time.monotonic() - cached[0] <= ACTIVATION_SECONDS:
            return cached[1], cached[2]

        async def read() -> tuple[bool, int]:
            began = time.monotonic()
            async with self.pool.acquire() as conn:
                self.reads += 1
                row = await registry.get_workflow_row(conn, workflow_id)
            if self._reading.get(("activation", workflow_id)) is reading:  # not forgotten meanwhile
                if len(self._activation) >= MAX_ACTIVATIONS:
                    self._activation.clear()
                self._activation[workflow_id] = (began, row["active"], row["active_version"])
            return row["active"], row["active_version"]

        reading = self._start(("activation", workflow_id), read)
        return await asyncio.shield(reading)

    def forget(self, workflow_id: str) -> None:
        """The workflow changed (pushed, (de)activated, archived, deleted): read its activation again.
        A read under way began before the change: what it finds is not kept, and the next caller reads
        anew."""
        self._activation.pop(workflow_id, None)
        self._reading.pop(("activation", workflow_id), None)

    def _start(self, key: Any, read: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
        """The read of ``key`` under way, or a new one. It goes on if a caller waiting for it is
        cancelled (the others still wait); its error reaches every caller, and the next call reads
        again."""
        reading = self._reading.get(key)
        if reading is None:
            reading = asyncio.ensure_future(read())
            self._reading[key] = reading

            def done(f: asyncio.Future[Any]) -> None:
                if self._reading.get(key) is f:
                    del self._reading[key]
                if not f.cancelled():
                    f.exception()  # retrieved: a read nobody waits for any more logs no warning

            reading.add_done_callback(done)
        return reading
