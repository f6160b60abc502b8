"""PostgreSQL through asyncpg: pooled connections, statements prepared and their values bound.

Cancellation (a timeout, a stop, a shutdown) while a statement runs: asyncpg sends the server a cancel
request for it (the protocol's CancelRequest, what ``pg_cancel_backend`` does), and the connection is
closed before the cancellation goes on, so the query is gone from ``pg_stat_activity`` by the time the
attempt is reported.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from typing import Any

import asyncpg

from legato.executor.sql import SqlBatch, SqlOutcome, SqlStatement
from legato.executor.sql.values import bind_value, json_cell, rows_affected
from legato.executor.step_runner import StepFailed
from legato.protocol.messages import JSONValue

CONNECT_TIMEOUT = 15.0
CLOSE_TIMEOUT = 5.0
CURSOR_PREFETCH = 100


class PostgresDriver:
    """Connections come from one small pool per connection URL (a rotated password is a new URL, so a
    new pool; the least recently used pools beyond ``max_pools`` are closed). A connection whose
    attempt was cancelled or failed outside a statement is closed, never reused."""

    schemes: tuple[str, ...] = ("postgres", "postgresql")

    def __init__(self, *, pool_size: int = 8, max_pools: int = 16, idle_lifetime: float = 60.0) -> None:
        self.pool_size = pool_size
        self.max_pools = max_pools
        self.idle_lifetime = idle_lifetime
        self._pools: OrderedDict[str, asyncpg.Pool] = OrderedDict()
        self._lock = asyncio.Lock()

    async def _pool(self, url: str) -> asyncpg.Pool:
        async with self._lock:
            pool = self._pools.get(url)
            if pool is None:
                pool = await asyncpg.create_pool(
                    url,
                    min_size=0,
                    max_size=self.pool_size,
                    timeout=CONNECT_TIMEOUT,
                    max_inactive_connection_lifetime=self.idle_lifetime,
                    server_settings={"application_name": "legato executor"},
                )
                self._pools[url] = pool
                while len(self._pools) > self.max_pools:
                    _, old = self._pools.popitem(last=False)
                    old.terminate()
            self._pools.move_to_end(url)
            return pool

    async def close(self) -> None:
        """Close every pool (idempotent)."""
        async with self._lock:
            pools, self._pools = list(self._pools.values()), OrderedDict()
        for pool in pools:
            try:
                await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                pool.terminate()

    async def run(self, url: str, batch: SqlBatch) -> SqlOutcome:
        pool = await self._pool(url)
        try:
            conn = await pool.acquire(timeout=CONNECT_TIMEOUT)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StepFailed(f"cannot connect: {type(exc).__name__}: {exc}") from None
        reusable = False
        try:
            if batch.transaction:
                async with conn.transaction():
                    outcome = await _run_all(conn, batch)
            else:
                outcome = await _run_all(conn, batch)
            reusable = True
            return outcome
        except StepFailed:
            reusable = not conn.is_in_transaction()  # a statement failed and was rolled back
            raise
        finally:
            if not reusable:
                # Cancelled (timeout, stop): asyncpg has asked the server to cancel the running
                # statement; a graceful close waits for that, bounded; terminate() is the fallback.
                try:
                    await asyncio.wait_for(conn.close(), CLOSE_TIMEOUT)
                except BaseException:
                    conn.terminate()
                    raise
                finally:
                    await pool.release(conn)
            else:
                await pool.release(conn)


async def _run_all(conn: asyncpg.Connection, batch: SqlBatch) -> SqlOutcome:
    affected = 0
    rows: list[dict[str, JSONValue]] = []
    truncated = False
    last = len(batch.statements) - 1
    for i, statement in enumerate(batch.statements):
        where = f"statement {i + 1} of {len(batch.statements)}" if last else "statement"
        try:
            prepared = await conn.prepare(statement.sql)
            args = _bound(prepared, statement, where)
            if i == last and batch.result != "none" and prepared.get_attributes():
                limit = 1 if batch.result == "first" else batch.max_rows
                rows, truncated = await _read(conn, prepared, args, limit, in_transaction=batch.transaction)
            else:
                await prepared.fetch(*args)
            affected += rows_affected(prepared.get_statusmsg() or "")
        except asyncpg.PostgresError as exc:
            raise StepFailed(f"{where}: {_describe(exc)}") from None
        except asyncpg.InterfaceError as exc:
            raise StepFailed(f"{where}: {exc}") from None
    return SqlOutcome(rows_affected=affected, rows=rows, truncated=truncated)


def _bound(prepared: Any, statement: SqlStatement, where: str) -> list[Any]:
    types = [t.name for t in prepared.get_parameters()]
    if len(types) != len(statement.args):
        raise StepFailed(
            f"{where}: it has {len(types)} placeholder(s) ($1...) but {len(statement.args)} arg(s) were given"
        )
    bound = []
    for n, (pg_type, value) in enumerate(zip(types, statement.args, strict=True), start=1):
        try:
            bound.append(bind_value(pg_type, value))
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise StepFailed(f"{where}: args[{n - 1}] for ${n} ({pg_type}): {exc}") from None
    return bound


async def _read(
    conn: asyncpg.Connection, prepared: Any, args: list[Any], limit: int, *, in_transaction: bool
) -> tuple[list[dict[str, JSONValue]], bool]:
    """At most ``limit`` rows through a cursor (a huge result is never fetched whole)."""
    json_columns = {a.name for a in prepared.get_attributes() if a.type.name in ("json", "jsonb")}

    async def fetch() -> list[Any]:
        out = []
        async for record in prepared.cursor(*args, prefetch=min(limit + 1, CURSOR_PREFETCH)):
            out.append(record)
            if len(out) > limit:
                break
        return out

    if in_transaction:
        records = await fetch()
    else:
        async with conn.transaction(readonly=False):  # a cursor needs one; a single statement is atomic
            records = await fetch()
    rows = [
        {
            k: (json.loads(v) if k in json_columns and isinstance(v, str) else json_cell(v))
            for k, v in r.items()
        }
        for r in records[:limit]
    ]
    return rows, len(records) > limit


def _describe(exc: asyncpg.PostgresError) -> str:
    text = f"{type(exc).__name__}: {exc}"
    detail = getattr(exc, "detail", None)
    if detail:
        text += f" ({detail})"
    sqlstate = getattr(exc, "sqlstate", None)
    return f"{text} [SQLSTATE {sqlstate}]" if sqlstate else text
