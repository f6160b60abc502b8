"""``sql``: statements against a named connection, through the driver its URL's scheme names.

``config``: ``connection`` (a name the executor resolves, see ``connection_store``), ``statements``
(``[{sql, args}]``: ``args`` are bound to ``$1, $2, ...``, never formatted into the text; a ``secret``
param among them is resolved here), ``transaction`` (default true: all statements commit or none),
``result`` (``none``, ``first`` or ``rows``: what the last statement's rows become) and ``max_rows``.

Outputs: ``rows_affected`` (all statements), ``row`` (first row or null) with ``result: first``,
``rows`` with ``result: rows``, and ``truncated: true`` when rows were left out (more than
``max_rows``, or more than ``ROWS_BYTE_LIMIT`` of JSON). A database error fails the attempt with its
message and SQLSTATE. Cancellation cancels the running query on the server (see the driver).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec

from legato.core.connections import connection_scheme
from legato.executor.connection_store import ConnectionStore
from legato.executor.secret_store import SecretStore
from legato.executor.sql import SqlBatch, SqlDriver, SqlStatement, default_drivers
from legato.executor.step_runner import StepContext, StepFailed, StepResult, parse_config
from legato.protocol.messages import JSONValue

ROWS_BYTE_LIMIT = 256 * 1024


class SqlStatementConfig(msgspec.Struct, frozen=True):
    """One statement of a sql step, with its arguments bound as query parameters."""

    sql: str
    args: list[JSONValue] = []


class SqlConfig(msgspec.Struct, frozen=True):
    """A sql step's config: the named connection, its statements, transaction and row limits."""

    connection: str
    statements: list[SqlStatementConfig]
    transaction: bool = True
    result: Literal["none", "first", "rows"] = "first"
    max_rows: Annotated[int, msgspec.Meta(ge=1)] = 100


class SqlRunner:
    """Runs ``sql`` steps through the driver the connection URL's scheme picks."""

    step_type = "sql"

    def __init__(
        self,
        connections: ConnectionStore | None = None,
        secrets: SecretStore | None = None,
        drivers: Mapping[str, SqlDriver] | None = None,
    ) -> None:
        self.connections = connections
        self.secrets = secrets
        self.drivers = drivers if drivers is not None else default_drivers()

    async def aclose(self) -> None:
        """Close the drivers' pooled connections (idempotent; the executor calls it at shutdown)."""
        for driver in {id(d): d for d in self.drivers.values()}.values():
            await driver.close()

    async def run(self, ctx: StepContext) -> StepResult:
        config = parse_config(ctx.item.config, SqlConfig)
        if not config.statements:
            raise StepFailed("config.statements: no statement to run")
        connection = (self.connections or ConnectionStore.from_environment()).lookup(config.connection)
        secrets = (self.secrets or SecretStore.from_environment()).resolve(
            [s.args for s in config.statements]
        )
        masking = connection.masking()
        scheme = connection_scheme(connection.url)
        driver = self.drivers.get(scheme)
        if driver is None:
            known = ", ".join(sorted(self.drivers)) or "none"
            raise StepFailed(
                f"connection {config.connection!r}: no SQL driver for URL scheme {scheme!r} (drivers: {known})"
            )
        batch = SqlBatch(
            statements=[SqlStatement(s.sql, list(secrets.reveal(s.args))) for s in config.statements],
            transaction=config.transaction,
            result=config.result,
            max_rows=config.max_rows,
            application_name=f"legato {ctx.item.workflow_id}/{ctx.item.step_id}",
        )
        try:
            outcome = await driver.run(connection.url, batch)
        except StepFailed as exc:
            raise StepFailed(secrets.mask(masking.mask(exc.error))) from None
        outputs: dict[str, JSONValue] = {"rows_affected": outcome.rows_affected}
        rows, truncated = cap_rows(outcome.rows, ROWS_BYTE_LIMIT)
        truncated = truncated or outcome.truncated
        if config.result == "first":
            outputs["row"] = rows[0] if rows else None
        elif config.result == "rows":
            outputs["rows"] = list(rows)
        if truncated and config.result != "none":
            outputs["truncated"] = True
        return StepResult(outputs={k: secrets.mask_json(masking.mask_json(v)) for k, v in outputs.items()})


def cap_rows(rows: list[dict[str, JSONValue]], limit: int) -> tuple[list[dict[str, JSONValue]], bool]:
    """The leading rows whose JSON fits in ``limit`` bytes, and whether any were left out."""
    size = 2
    for i, row in enumerate(rows):
        size += len(msgspec.json.encode(row)) + 1
        if size > limit:
            return rows[:i], True
    return rows, False
