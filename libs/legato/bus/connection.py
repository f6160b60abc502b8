"""Connecting to NATS with reconnect handling and logged connection events."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
from nats.aio.client import Client

from legato.telemetry import get_logger

log = get_logger("legato.bus")


async def connect(url: str, *, name: str, connect_timeout: float = 5.0) -> Client:
    """Connect with unbounded reconnects (a service rides out a NATS restart) and logged transitions.

    The first connection is bounded: a wrong URL is one clear error at start, not an endless retry loop.
    """
    state = {"connected": False}
    first_errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        if state["connected"]:
            log.warning("nats_error", error=repr(exc))
        else:
            first_errors[:] = [exc]  # before the first connection: reported once, below

    async def on_disconnected() -> None:
        log.warning("nats_disconnected")

    async def on_reconnected() -> None:
        log.info("nats_reconnected", url=url)

    async def on_closed() -> None:
        log.info("nats_closed")

    try:
        nc = await asyncio.wait_for(
            _connect(url, name, connect_timeout, on_error, on_disconnected, on_reconnected, on_closed),
            timeout=connect_timeout + 2.0,
        )
    except TimeoutError:
        why = repr(first_errors[0]) if first_errors else "no answer"
        raise ConnectionError(f"cannot connect to NATS at {url}: {why}") from None
    state["connected"] = True
    return nc


async def _connect(
    url: str,
    name: str,
    connect_timeout: float,
    on_error: Any,
    on_disconnected: Any,
    on_reconnected: Any,
    on_closed: Any,
) -> Client:
    nc: Client = await nats.connect(
        # A comma-separated list seeds the client with several cluster members; it learns the rest.
        servers=[u.strip() for u in url.split(",") if u.strip()],
        name=name,
        connect_timeout=connect_timeout,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
        closed_cb=on_closed,
        # The client buffers publishes while reconnecting; bounded so memory cannot grow without limit.
        pending_size=64 * 1024 * 1024,
    )
    return nc
