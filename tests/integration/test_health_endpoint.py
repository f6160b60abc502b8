"""``/healthz`` and ``/readyz`` beside ``/metrics``, over real HTTP: a real executor process against a NATS
of its own that goes away and comes back, and a host with Postgres whose database disappears."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from legato.bus.connection import connect
from legato.bus.streams import provision_streams
from legato.bus.topology import Topology
from legato.config.settings import Settings
from legato.devstack import EmbeddedNats
from legato.devstack.ports import free_port
from legato.lifecycle.component import Component
from legato.runtime.host import ServiceHost


async def get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.decode().partition("\r\n\r\n")
    return int(head.split(" ")[1]), body


async def ready(port: int) -> tuple[int, dict[str, Any]]:
    status, body = await get(port, "/readyz")
    return status, json.loads(body)


async def until_ready_is(port: int, want: int, timeout: float = 30.0) -> dict[str, Any]:
    last: dict[str, Any] = {}
    async with asyncio.timeout(timeout):
        while True:
            try:
                status, last = await ready(port)
                if status == want:
                    return last
            except OSError:
                pass
            await asyncio.sleep(0.2)


async def test_executor_probes_follow_its_nats_connection(
    settings: Settings, own_nats: EmbeddedNats, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "LEGATO_NATS_URL": own_nats.url,
        "LEGATO_NAMESPACE": settings.namespace,
        "LEGATO_METRICS_PORT": str(port),
        "LEGATO_METRICS_HOST": "127.0.0.1",
        "LEGATO_LOG_FORMAT": "json",
        "LEGATO_STATE_DIR": str(tmp_path / "state"),
    }
    env.pop("LEGATO_DATABASE_URL", None)
    # A stateful service creates the streams and the attempts bucket; an executor waits for them.
    nc = await connect(own_nats.url, name="test-provision")
    try:
        await provision_streams(nc.jetstream(), Topology(settings.namespace, settings.partitions))
    finally:
        await nc.close()
    log = (tmp_path / "executor.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "legato.executor", env=env, stdout=log, stderr=asyncio.subprocess.STDOUT
    )
    try:
        body = await until_ready_is(port, 200)
        assert body == {
            "status": "ready",
            "checks": {"nats": "ok", "executor": "ok", "executor-heartbeats": "ok"},
        }
        assert await get(port, "/healthz") == (200, "ok\n")
        own_nats.stop()
        body = await until_ready_is(port, 503)
        assert body["status"] == "not_ready" and body["checks"]["nats"] != "ok"
        assert await get(port, "/healthz") == (200, "ok\n")  # alive: a restart would not help
        own_nats.start()
        body = await until_ready_is(port, 200)
        assert body["checks"]["nats"] == "ok"
        status, text = await get(port, "/nothing")
        assert status == 404 and "/readyz" in text
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)
        log.close()
    assert proc.returncode == 0, (tmp_path / "executor.log").read_text()[-3000:]


class Idle(Component):
    name = "idle"

    async def _run(self) -> None:
        await self.wait_stopping()


async def test_a_host_with_postgres_is_not_ready_when_its_database_is_gone(
    settings: Settings, pg_admin_url: str
) -> None:
    port = free_port()
    settings = msgspec.structs.replace(settings, metrics_port=port, metrics_host="127.0.0.1")
    async with ServiceHost("probe", settings, configure_process=False) as host:
        host.add(Idle())
        task = asyncio.create_task(host.run(handle_signals=False))
        try:
            body = await until_ready_is(port, 200)
            assert body["checks"] == {
                "nats": "ok",
                "postgres": "ok",
                "idle": "ok",
                "outbox-relay": "ok",
                "consumer:" + host.topology.consumer_name("deadletters"): "ok",
            }
            name = settings.database_url.rsplit("/", 1)[1]
            conn = await asyncpg.connect(pg_admin_url)
            try:
                await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            finally:
                await conn.close()
            body = await until_ready_is(port, 503)
            assert body["checks"]["postgres"].startswith("unreachable: ")
            assert body["checks"]["nats"] == "ok"
            assert await get(port, "/healthz") == (200, "ok\n")
        finally:
            host.request_shutdown()
            await asyncio.wait_for(task, 30)
