"""Real servers for the whole suite.

A nats-server with JetStream and a PostgreSQL are started once per test session (on free ports, in
temporary folders), unless LEGATO_TEST_NATS_URL / LEGATO_TEST_DATABASE_URL point at external ones.
Each test gets its own database (cloned from a migrated template) and its own NATS namespace, so
tests never see each other's streams, subjects or rows.

NATS runs WITH authentication and per-role permissions (docs/security.md), so the whole suite runs
under the permissions production uses: a keyring (``keyring`` fixture) holds one nkey per service and
per API role, plus ``test`` (role ``root``: the whole bus) that the tests themselves connect as. Its seed
is exported as ``LEGATO_NATS_CREDS`` (and the users file as ``LEGATO_AUTH_USERS``) for the session, so
``Settings``, ``LegatoClient.connect``, ``legato.bus.connection`` and CLI subprocesses all carry it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import nats
import pytest

from legato.bus.streams import bucket_stream
from legato.config.settings import Settings
from legato.devstack import EmbeddedNats, EmbeddedPostgres
from legato.security.keyring import DEFAULT_IDENTITIES, Keyring
from legato.store.migrations import migrate_url
from legato.store.pool import ensure_database

TEMPLATE_DB = "legato_test_template"


@pytest.fixture(scope="session")
def keyring() -> Iterator[Keyring | None]:
    """The session's identities (None against an external NATS without our users)."""
    if os.environ.get("LEGATO_TEST_NATS_URL"):
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="legato-test-keys-"))
    # test: the suite's own identity; operator-ada, machine: named actors some tests check in timelines.
    ring = Keyring(folder / "keys").ensure(
        (*DEFAULT_IDENTITIES, ("test", "root"), ("operator-ada", "admin"), ("machine", "admin"))
    )
    saved = {k: os.environ.get(k) for k in ("LEGATO_NATS_CREDS", "LEGATO_AUTH_USERS")}
    os.environ["LEGATO_NATS_CREDS"] = str(ring.seed_file("test"))
    os.environ["LEGATO_AUTH_USERS"] = str(ring.users_file)
    try:
        yield ring
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def nats_server(keyring: Keyring | None) -> Iterator[EmbeddedNats | None]:
    """The session's nats-server (None when LEGATO_TEST_NATS_URL names an external one)."""
    if os.environ.get("LEGATO_TEST_NATS_URL"):
        yield None
        return
    store = Path(tempfile.mkdtemp(prefix="legato-test-nats-"))
    server = EmbeddedNats(store, preferred_port=0, users=keyring.users() if keyring else None).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(store, ignore_errors=True)


@pytest.fixture(scope="session")
def nats_url(nats_server: EmbeddedNats | None) -> str:
    return nats_server.url if nats_server is not None else os.environ["LEGATO_TEST_NATS_URL"]


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


async def _fresh_database(pg_admin_url: str, template: str | None) -> AsyncIterator[str]:
    """A new database (a copy of ``template``, else empty) for one test; dropped after it."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(pg_admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    finally:
        await conn.close()
    yield pg_admin_url.rsplit("/", 1)[0] + f"/{name}"
    conn = await asyncpg.connect(pg_admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def database_url(pg_admin_url: str, template_db: str) -> AsyncIterator[str]:
    """A database of this code's schema."""
    async for url in _fresh_database(pg_admin_url, TEMPLATE_DB):
        yield url


@pytest.fixture
async def empty_database_url(pg_admin_url: str) -> AsyncIterator[str]:
    """A database with no migration applied (tests of migrations and of the runner)."""
    async for url in _fresh_database(pg_admin_url, None):
        yield url


@pytest.fixture
async def namespace(nats_url: str, keyring: Keyring | None) -> AsyncIterator[str]:
    """A fresh namespace; its streams and KV buckets are deleted afterwards. Streams with a size limit
    (the signal stream's 1 GiB) reserve it from the server's JetStream storage: a session that left them
    behind would run out of storage after a few dozen tests."""
    ns = f"t{uuid.uuid4().hex[:10]}"
    yield ns
    prefix = f"{ns.upper()}_"
    try:
        nc = await nats.connect(
            nats_url, **({"nkeys_seed": str(keyring.seed_file("test"))} if keyring else {})
        )
    except Exception:
        return
    try:
        js = nc.jetstream()
        for name in await js.streams_info():
            stream = name.config.name or ""
            if stream.startswith((prefix, bucket_stream(prefix))):
                try:
                    await js.delete_stream(stream)
                except Exception:
                    pass
    finally:
        await nc.close()


@pytest.fixture
def settings(nats_url: str, database_url: str, namespace: str, keyring: Keyring | None) -> Settings:
    return Settings(
        nats_url=nats_url,
        nats_creds=str(keyring.seed_file("test")) if keyring else "",
        auth_users=str(keyring.users_file) if keyring else "",
        insecure=keyring is None,
        database_url=database_url,
        namespace=namespace,
        partitions=4,
        grace_period=5.0,
        log_format="json",
        log_level=os.environ.get("LEGATO_TEST_SERVICE_LOG_LEVEL", "warning"),  # raise it to debug a failure
    )
