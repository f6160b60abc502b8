"""The client's first connection gives up quickly on a dead URL (the CLI can say so at once), and a
connected client still rides out a server that goes away for a while."""

from __future__ import annotations

import socket
import time

import pytest

from legato.client import LegatoClient
from legato.client.client import FIRST_CONNECT_ATTEMPTS, RECONNECT_ATTEMPTS
from legato.config.settings import Settings


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"nats://127.0.0.1:{port}"  # nothing listens there any more


async def test_a_dead_url_fails_in_seconds_naming_it() -> None:
    url = dead_url()
    started = time.monotonic()
    with pytest.raises(ConnectionError) as err:
        await LegatoClient.connect(url)
    took = time.monotonic() - started
    assert url in str(err.value)
    # FIRST_CONNECT_ATTEMPTS tries, 2 s apart (nats-py's reconnect wait); it took 7 s with 4 tries.
    assert took < 2.0 * FIRST_CONNECT_ATTEMPTS + 1.5, took


async def test_a_connected_client_keeps_its_reconnect_attempts(settings: Settings) -> None:
    client = await LegatoClient.connect(settings.nats_url, namespace=settings.namespace, settings=settings)
    try:
        assert client.nc.options["max_reconnect_attempts"] == RECONNECT_ATTEMPTS
        assert client.nc.is_connected
    finally:
        await client.close()
