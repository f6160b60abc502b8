"""asyncpg pool with JSON codecs, and creating the database when it is missing."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import msgspec

_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode


def _encode(value: Any) -> str:
    return _json_encode(value).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("jsonb", "json"):
        await conn.set_type_codec(typ, encoder=_encode, decoder=_json_decode, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's default reset on release (an extra round trip: RESET ALL, UNLISTEN, CLOSE ALL…):
    Legato never changes session state on pooled connections; an open transaction is still rolled back."""


IDLE_IN_TRANSACTION_TIMEOUT_MS = "60000"


async def create_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 8,
    command_timeout: float = 60.0,
    application_name: str = "legato",
    generic_plans: bool = False,
) -> asyncpg.Pool:
    """A pool whose connections map jsonb <-> Python values through msgspec.

    ``application_name`` names its sessions in ``pg_stat_activity`` (the scheduler puts its incarnation
    there, so that another replica can end the transactions of one that stopped, see ``leases.py``).

    ``generic_plans``: its sessions plan each prepared statement once (``plan_cache_mode =
    force_generic_plan``). Only for a pool whose statements are key lookups whose best plan does not
    depend on the values: Postgres's default re-plans a statement on every run while a plan for the
    values at hand looks cheaper, and with ``unnest($1::text[])`` it always does (it counts the array's
    elements then, 10 without them). The API's start statement cost 0.3 ms of planning per batch
    that way, more than running it. Not for a pool that serves optional filters (``$1 IS NULL OR …``)
    or ranges: one plan for every value would scan where the value allows an index."""
    settings = {
        "application_name": application_name,
        # A process stopped inside a transaction (SIGSTOP, a frozen VM) must not hold its row
        # locks for ever: no transaction of Legato sits idle this long (actors set less).
        "idle_in_transaction_session_timeout": IDLE_IN_TRANSACTION_TIMEOUT_MS,
    }
    if generic_plans:
        settings["plan_cache_mode"] = "force_generic_plan"
    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            command_timeout=command_timeout,
            init=_init_connection,
            reset=_keep_session,
            server_settings=settings,
        )
    except (OSError, asyncpg.PostgresError) as exc:
        raise ConnectionError(f"cannot connect to PostgreSQL at {redact(url)}: {exc}") from exc
    assert pool is not None
    return pool


async def close_pool(pool: asyncpg.Pool, timeout: float = 5.0) -> None:
    """Close ``pool`` once its connections are released, within ``timeout`` seconds; then cut them."""
    if pool.is_closing():
        return
    try:
        await asyncio.wait_for(pool.close(), timeout=timeout)
    except Exception:
        pool.terminate()


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


async def ensure_database(url: str) -> None:
    """Create the database named in ``url`` when it does not exist (dev and tests)."""
    parts = urlsplit(url)
    name = parts.path.lstrip("/") or "postgres"
    admin = urlunsplit(parts._replace(path="/postgres"))
    conn = await asyncpg.connect(admin)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            except asyncpg.DuplicateDatabaseError:
                pass
    finally:
        await conn.close()
