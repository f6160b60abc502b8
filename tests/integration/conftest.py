"""Fixtures the integration tests share: a NATS connection to the session's server, the session's
stream topology, and a nats-server of a test's own (to stop, kill and restart)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from legato.bus import Topology
from legato.bus.connection import connect_with
from legato.config.settings import Settings
from legato.devstack import EmbeddedNats


@pytest.fixture
async def nc(settings: Settings) -> AsyncIterator[Client]:
    client = await connect_with(settings, name="legato-test")
    yield client
    await client.close()


@pytest.fixture
def topo(settings: Settings) -> Topology:
    """The streams and subjects of the session's namespace and partitions."""
    return Topology(settings.namespace, settings.partitions)


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path / "nats", preferred_port=0).start()
    try:
        yield server
    finally:
        server.stop()
