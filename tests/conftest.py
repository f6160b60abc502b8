"""Real servers for the whole suite.

A nats-server with JetStream and a PostgreSQL are started once per test session (on free ports, in
temporary folders), unless LEGATO_TEST_NATS_URL / LEGATO_TEST_DATABASE_URL point at external ones.
Each test gets its own database (cloned from a migrated template) and its own NATS namespace, so
tests never see each other's streams, subjects or rows.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from legato.devstack import EmbeddedNats, EmbeddedPostgres
from legato.runtime.settings import Settings
from legato.store.migrations import migrate_url
from legato.store.pool import ensure_database

TEMPLATE_DB = "legato_test_template"


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    external = os.environ.get("LEGATO_TEST_NATS_URL")
    if external:
        yield external
        return
    store = Path(tempfile.mkdtemp(prefix="legato-test-nats-"))
    server = EmbeddedNats(store, preferred_port=0).start()
    try:
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(store, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """URL of the server's `postgres` database (for creating per-test databases)."""
    external = os.environ.get("LEGATO_TEST_DATABASE_URL")
    if external:
        base = external.rsplit("/", 1)[0]
        yield f"{base}/postgres"
        return
    root = Path(tempfile.mkdtemp(prefix="legato-test-pg-"))
    root.chmod(0o711)
    server = EmbeddedPostgres(root / "data", preferred_port=0, durable=False).start()
    try:
        yield server.url("postgres")
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
async def template_db(pg_admin_url: str) -> str:
    base = pg_admin_url.rsplit("/", 1)[0]
    conn = await asyncpg.connect(pg_admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}"')
    finally:
        await conn.close()
    url = f"{base}/{TEMPLATE_DB}"
    await ensure_database(url)
    await migrate_url(url)
    return url


@pytest.fixture
async def database_url(pg_admin_url: str, template_db: str) -> AsyncIterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(pg_admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"')
    finally:
        await conn.close()
    yield pg_admin_url.rsplit("/", 1)[0] + f"/{name}"
    conn = await asyncpg.connect(pg_admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(nats_url: str, database_url: str, namespace: str) -> Settings:
    return Settings(
        nats_url=nats_url,
        database_url=database_url,
        namespace=namespace,
        partitions=4,
        grace_period=5.0,
        log_format="json",
        log_level="warning",
    )
