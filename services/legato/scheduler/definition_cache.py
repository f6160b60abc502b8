"""Compiled workflow definitions, loaded from Postgres once per (workflow, version) and kept in an LRU.

Versions are immutable, so a compiled version never goes stale.
"""

from __future__ import annotations

from collections import OrderedDict

import asyncpg

from legato.core import CompiledWorkflow, compile_workflow, definition_from_json
from legato.scheduler import repository


class UnknownVersion(LookupError):
    """A (workflow, version) with no stored definition."""


class DefinitionCache:
    """Compiled definitions by (workflow, version), loaded once and kept in an LRU."""

    def __init__(self, capacity: int = 512) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, int], CompiledWorkflow] = OrderedDict()

    def get(self, workflow_id: str, version: int) -> CompiledWorkflow:
        """The compiled version; it must have been loaded with ``ensure`` in this batch."""
        key = (workflow_id, version)
        item = self._items.get(key)
        if item is None:
            raise UnknownVersion(f"workflow {workflow_id} version {version} is not loaded")
        self._items.move_to_end(key)
        return item

    def has(self, workflow_id: str, version: int) -> bool:
        return (workflow_id, version) in self._items

    async def ensure(
        self,
        conn: asyncpg.Connection,
        workflow_id: str,
        versions: set[int],
        *,
        optional: set[int] | None = None,
    ) -> set[int]:
        """Load ``versions``; a version in ``optional`` (asked for by a start message) may not exist: it is
        returned, and the caller fails that run instead of failing the whole batch."""
        missing = [v for v in versions if (workflow_id, v) not in self._items]
        if not missing:
            return set()
        stored = await repository.definitions(conn, workflow_id, missing)
        for version, text in stored.items():
            self._items[(workflow_id, version)] = compile_workflow(definition_from_json(text.encode()))
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        found = set(stored)
        lost = set(missing) - found - (optional or set())
        if lost:
            raise UnknownVersion(f"workflow {workflow_id} has no version(s) {sorted(lost)}")
        return set(missing) - found
