"""Malformed signals are stored as rejected with their error (never dead-lettered), and listed by the CLI."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import asyncpg

from legato.bus.connection import connect
from legato.client import LegatoClient
from legato.config.settings import Settings
from tests.support.stack import running_stack

DEEP = b'{"a":' * 3000 + b"1" + b"}" * 3000
NUL_BYTES = b'{"a": "x\x00y"}\x00\x00'
NUL_ESCAPE = b'{"a": "x\\u0000y", "ok": 1}'
NUL_KEY = b'{"k\\u0000": 1}'
DEEP_OBJECT = b'{"a":' * 100 + b"1" + b"}" * 100  # decodes, but deeper than a stored signal may be


async def rejected_ids(
    client: LegatoClient, want: set[str], timeout: float = 60.0
) -> dict[str, dict[str, str]]:
    deadline = time.monotonic() + timeout
    while True:
        res = await client.call("signal.list", {"rejected": True, "limit": 100})
        found = {s["id"]: s for s in res["signals"]}
        if want <= set(found):
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"rejected so far: {sorted(found)}")
        await asyncio.sleep(0.2)


async def test_deep_nul_and_escaped_nul_signals_are_stored_rejected_not_dead_lettered(
    settings: Settings, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path) as (stack, client):
        nc = await connect(settings.nats_url, name="test-malformed")
        js = nc.jetstream()
        subject = f"{settings.namespace}.legato.signal.upload"
        for msg_id, body in (
            ("deep", DEEP),
            ("nul-bytes", NUL_BYTES),
            ("nul-escape", NUL_ESCAPE),
            ("nul-key", NUL_KEY),
            ("deep-object", DEEP_OBJECT),
        ):
            await js.publish(subject, body, headers={"Nats-Msg-Id": msg_id})
        await js.publish(subject, b'{"fine": true}', headers={"Nats-Msg-Id": "fine"})
        await nc.close()
        found = await rejected_ids(client, {"deep", "nul-bytes", "nul-escape", "nul-key", "deep-object"})
        assert "nested deeper than" in found["deep"]["error"]
        assert "not valid JSON" in found["nul-bytes"]["error"]
        assert "NUL" in found["nul-escape"]["error"] and found["nul-escape"]["error"].startswith("a:")
        assert "NUL" in found["nul-key"]["error"]
        assert "nested deeper than 64 levels" in found["deep-object"]["error"]
        # Stored bounded, with the NULs shown escaped.
        assert len(found["deep"]["raw"]) <= 4000
        assert "\\x00" in found["nul-bytes"]["raw"] and "\x00" not in found["nul-bytes"]["raw"]
        ok = await client.call("signal.list", {"name": "upload", "limit": 100})
        assert any(s["id"] == "fine" and not s["rejected"] for s in ok["signals"])
        conn = await asyncpg.connect(settings.database_url)
        try:
            dead = await conn.fetchval("SELECT count(*) FROM dead_letter WHERE stream LIKE '%SIGNALS%'")
        finally:
            await conn.close()
        assert dead == 0
        listed = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "legato.cli.main", "signal", "list", "--rejected"],
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0, listed.stderr
        for msg_id in ("deep", "nul-bytes", "nul-escape", "nul-key"):
            assert msg_id in listed.stdout
        assert "REJECTED" in listed.stdout and "NUL character" in listed.stdout
