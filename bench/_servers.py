"""Servers for the benchmarks: embedded nats-server and PostgreSQL in a temp folder, or external ones
from LEGATO_BENCH_NATS_URL / LEGATO_BENCH_DATABASE_URL."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from legato.client import LegatoClient
from legato.devstack import EmbeddedNats, EmbeddedPostgres
from legato.runtime.settings import Settings
from legato.security.keyring import Keyring


@dataclass
class BenchServers:
    nats_url: str
    database_url: str
    tmp: Path
    namespace: str
    keyring: Keyring | None = None


@contextmanager
def bench_servers(db_name: str = "legato_bench", *, auth: bool = False) -> Iterator[BenchServers]:
    """``auth``: NATS requires nkeys with per-role permissions, API requests and work items are signed."""
    tmp = Path(tempfile.mkdtemp(prefix="legato-bench-"))
    tmp.chmod(0o711)
    started: list[EmbeddedNats | EmbeddedPostgres] = []
    keyring = Keyring(tmp / "keys").ensure() if auth else None
    try:
        nats_url = os.environ.get("LEGATO_BENCH_NATS_URL")
        if not nats_url:
            nats = EmbeddedNats(
                tmp / "nats", preferred_port=0, users=keyring.users() if keyring else None
            ).start()
            started.append(nats)
            nats_url = nats.url
        db_url = os.environ.get("LEGATO_BENCH_DATABASE_URL")
        if not db_url:
            pg = EmbeddedPostgres(tmp / "pg", preferred_port=0, durable=True).start()
            started.append(pg)
            db_url = pg.url(f"{db_name}_{uuid.uuid4().hex[:6]}")
        yield BenchServers(nats_url, db_url, tmp, f"bench{uuid.uuid4().hex[:6]}", keyring)
    finally:
        for server in reversed(started):
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def bench_settings(servers: BenchServers, partitions: int = 8) -> Settings:
    """Settings for the services a benchmark starts against ``servers``."""
    return Settings(
        nats_url=servers.nats_url,
        database_url=servers.database_url,
        namespace=servers.namespace,
        partitions=partitions,
        log_level="warning",
        # The benchmark's own client is the admin; each service gets its own seed (Stack).
        nats_creds=str(servers.keyring.seed_file("admin")) if servers.keyring else "",
        auth_users=str(servers.keyring.users_file) if servers.keyring else "",
    )


async def wait_api(client: LegatoClient) -> None:
    """Until the trigger service answers (up to a minute)."""
    for _ in range(300):
        try:
            await client.call("workflow.list", {"limit": 1}, timeout=2.0)
            return
        except Exception:
            await asyncio.sleep(0.2)
    raise RuntimeError("API did not come up")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]
