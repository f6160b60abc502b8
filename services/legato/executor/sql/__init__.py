"""SQL drivers behind one Protocol: the ``sql`` runner picks one by the connection URL's scheme.

PostgreSQL (asyncpg) is built in. Another database needs a class with ``schemes`` and ``run`` added
to :func:`default_drivers`; the runner, its outputs, masking and cancellation stay the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from legato.protocol.messages import JSONValue


@dataclass(frozen=True)
class SqlStatement:
    """One statement and the values bound to its placeholders (JSON values, never formatted in)."""

    sql: str
    args: list[JSONValue] = field(default_factory=list)


@dataclass(frozen=True)
class SqlBatch:
    """What one attempt runs: statements in order, in one transaction unless ``transaction`` is false."""

    statements: list[SqlStatement]
    transaction: bool = True
    result: Literal["none", "first", "rows"] = "first"
    max_rows: int = 100
    application_name: str = "legato"


@dataclass(frozen=True)
class SqlOutcome:
    """Rows affected by all statements, and the last statement's rows (at most ``max_rows``)."""

    rows_affected: int
    rows: list[dict[str, JSONValue]]
    truncated: bool = False


class SqlDriver(Protocol):
    """Runs a batch against the database at ``url``; cancellable at any await (the query is cancelled
    on the server before the cancellation propagates). A database error raises ``StepFailed``."""

    schemes: tuple[str, ...]

    async def run(self, url: str, batch: SqlBatch) -> SqlOutcome: ...

    async def close(self) -> None:
        """Release pooled connections (idempotent)."""
        ...


def default_drivers() -> Mapping[str, SqlDriver]:
    """URL scheme -> driver."""
    from legato.executor.sql.postgres import PostgresDriver

    drivers: list[SqlDriver] = [PostgresDriver()]
    return {scheme: d for d in drivers for scheme in d.schemes}


__all__ = ["SqlBatch", "SqlDriver", "SqlOutcome", "SqlStatement", "default_drivers"]
