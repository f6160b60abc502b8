"""Signals published without a message id, against the real signal router process: recreating the
signal stream restarts its sequence numbers, and the new signals must still be stored, not dropped as
duplicates of the old ones."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import asyncpg

from legato.bus.connection import connect
from legato.bus.streams import provision_streams
from legato.bus.topology import Topology
from legato.config.settings import Settings
from legato.devstack.processes import ServiceProcess, service_env


async def _stored(conn: asyncpg.Connection, n: int, timeout: float = 60.0) -> list[asyncpg.Record]:
    deadline = time.monotonic() + timeout
    while True:
        rows = await conn.fetch("SELECT id, params FROM signal WHERE name = 'anon' ORDER BY seq")
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.1)


async def test_id_less_signals_after_the_stream_is_recreated_are_stored(
    settings: Settings, tmp_path: Path
) -> None:
    router = ServiceProcess(
        "signal_router", "legato.signal_router", [], service_env(settings, tmp_path / "state"), tmp_path
    )
    router.start()
    topo = Topology(settings.namespace, settings.partitions)
    nc = await connect(settings.nats_url, name="test-signal-keys")
    conn = None
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + 60
        while True:  # the router provisions the streams and its consumer at start
            try:
                await js.consumers_info(topo.signals_stream)
                if (await js.stream_info(topo.signals_stream)).state.consumer_count > 0:
                    break
            except Exception:
                pass
            assert time.monotonic() < deadline, router.log_tail()
            await asyncio.sleep(0.2)
        subject = topo.signal_subject("anon")
        for i in range(3):  # no Nats-Msg-Id header: keyed by the router
            await js.publish(subject, json.dumps({"n": i, "life": 1}).encode())
        conn = await asyncpg.connect(settings.database_url)
        first = await _stored(conn, 3)
        assert len(first) == 3, router.log_tail()

        # Recreate the stream: sequences start again at 1.
        await js.delete_stream(topo.signals_stream)
        await provision_streams(js, topo)
        for i in range(3):
            ack = await js.publish(subject, json.dumps({"n": i, "life": 2}).encode())
            assert ack.seq == i + 1
        rows = await _stored(conn, 6)
        bodies = [json.loads(r["params"]) for r in rows]
        stored = sorted((b["life"], b["n"]) for b in bodies)
        assert stored == [(life, i) for life in (1, 2) for i in range(3)], router.log_tail()
        assert len({r["id"] for r in rows}) == 6
    finally:
        if conn is not None:
            await conn.close()
        await nc.close()
        router.terminate()
