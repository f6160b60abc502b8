"""Publishing work as the scheduler does, for tests that feed an executor directly.

The suite's executors run only work items signed with a scheduler key (docs/security.md); a test that
publishes items itself signs them with the session keyring's scheduler seed, exactly as the scheduler's
publisher does.
"""

from __future__ import annotations

import os
from pathlib import Path

from nats.aio.client import Client

from legato.bus.publisher import Publisher
from legato.bus.topology import Topology
from legato.config.settings import Settings
from legato.security.wiring import origin_signer


def scheduler_publisher(nc: Client, topo: Topology, **kwargs: object) -> Publisher:
    users = os.environ.get("LEGATO_AUTH_USERS", "")
    if not users:
        return Publisher(nc, **kwargs)  # type: ignore[arg-type]
    seed = Path(users).parent / "scheduler.nk"
    settings = Settings(nats_creds=str(seed), auth_users=users, namespace=topo.namespace)
    return Publisher(nc, sign=origin_signer(settings, topo), **kwargs)  # type: ignore[arg-type]


def creds_for(name: str) -> str | None:
    """The seed file of identity ``name`` in the session keyring (tests/conftest.py); None without one.

    An actor recorded in the audit trail is the signing identity, so a test that checks "who did it"
    connects as that identity."""
    users = os.environ.get("LEGATO_AUTH_USERS", "")
    seed = Path(users).parent / f"{name}.nk" if users else None
    return str(seed) if seed is not None and seed.exists() else None
