"""Connecting to NATS with reconnect handling and logged connection events."""

from __future__ import annotations

import nats
from nats.aio.client import Client

from legato.telemetry import get_logger

log = get_logger("legato.bus")


async def connect(url: str, *, name: str, connect_timeout: float = 5.0) -> Client:
    """Connect with unbounded reconnects (a service rides out a NATS restart) and logged transitions."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats_error", error=repr(exc))

    async def on_disconnected() -> None:
        log.warning("nats_disconnected")

    async def on_reconnected() -> None:
        log.info("nats_reconnected", url=str(nc.connected_url.geturl() if nc.connected_url else url))

    async def on_closed() -> None:
        log.info("nats_closed")

    nc: Client = await nats.connect(
        servers=[url],
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
