"""Dead letters through the API and the CLI: listed with the raw message, headers, error and deliveries;
replayed once however often replay is asked; discarded."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from legato.bus.topology import Topology
from legato.client import ApiError, LegatoClient
from legato.config.settings import Settings
from legato.protocol import encode
from legato.protocol.messages import StartRun, TriggerInfo
from tests.support.stack import running_stack, wait_for


def later_workflow(marker: Path) -> str:
    return f"""
id: later
run_strategy: {{type: parallel, max_concurrency: 10}}
steps:
  - id: mark
    type: shell
    command: 'echo ran >> {marker}'
"""


async def dead_letters(client: LegatoClient, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        rows: list[dict[str, Any]] = (await client.call("dead_letter.list", {}))["dead_letters"]
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.2)


def trigger_subject(settings: Settings, workflow_id: str) -> str:
    """Where the trigger service would publish for this workflow (the stack's partition count)."""
    return Topology(settings.namespace, settings.partitions).trigger_subject(workflow_id)


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LEGATO_NATS_URL": settings.nats_url, "LEGATO_NAMESPACE": settings.namespace}
    return subprocess.run(
        [sys.executable, "-m", "legato.cli.main", *args], env=env, capture_output=True, text=True, timeout=60
    )


async def test_dead_letters_are_shown_and_replayed_exactly_once(settings: Settings, tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    async with running_stack(settings, tmp_path) as (_stack, client):
        # A start for a workflow that does not exist yet: the scheduler dead-letters it (poison).
        start = StartRun(
            workflow_id="later",
            trigger_key="test:later-1",
            instance_id="later-1",
            trigger=TriggerInfo(kind="api", by="test"),
            params={},
            requested_at=time.time(),
        )
        js = client.nc.jetstream()
        subject = trigger_subject(settings, "later")
        await js.publish(subject, encode(start), headers={"Nats-Msg-Id": "start:later-1"})
        # And a message no consumer can decode.
        await js.publish(subject, b"\xff not json", headers={"Nats-Msg-Id": "garbage-1"})
        rows = await dead_letters(client, 2)
        assert len(rows) == 2, rows
        by_msg = {r["msg_id"]: r for r in rows}
        poison, garbage = by_msg["start:later-1"], by_msg["garbage-1"]
        assert "unknown workflow" in poison["error"] and poison["deliveries"] >= 1
        assert poison["subject"] == subject and poison["replayed_at"] is None

        shown = await client.call("dead_letter.get", {"id": poison["id"]})
        assert shown["payload_encoding"] == "utf-8" and '"later-1"' in shown["payload"]
        assert shown["headers"]["Nats-Msg-Id"] == "start:later-1"
        raw = await client.call("dead_letter.get", {"id": garbage["id"]})
        assert raw["payload_encoding"] == "base64" and "undecodable" in raw["error"]

        out = cli(settings, "dead-letters", "list")
        assert out.returncode == 0, out.stderr
        assert str(poison["id"]) in out.stdout and "unknown workflow" in out.stdout
        out = cli(settings, "dead-letters", "show", str(poison["id"]))
        assert out.returncode == 0 and "Nats-Msg-Id: start:later-1" in out.stdout and "later-1" in out.stdout

        # The cause is fixed; replaying many times at once (and again later) republishes once.
        await client.push(later_workflow(marker))
        replies = await asyncio.gather(
            *(client.call("dead_letter.replay", {"id": poison["id"]}) for _ in range(5))
        )
        assert sorted(r["replayed"] for r in replies) == [False, False, False, False, True]
        out = cli(settings, "dead-letters", "replay", str(poison["id"]))
        assert out.returncode == 0 and "already replayed" in out.stdout, out
        info = await wait_for(client, "later-1")
        assert info["status"] == "succeeded", info
        await asyncio.sleep(2.0)  # time for a second copy to show up, were one sent
        assert marker.read_text().splitlines() == ["ran"]
        assert (await client.call("instance.list", {"workflow_id": "later"}))["instances"][0][
            "instance_id"
        ] == ("later-1")

        # Discarding: gone from the default list, kept with --all, never replayed.
        out = cli(settings, "dead-letters", "discard", str(garbage["id"]))
        assert out.returncode == 0, out.stderr
        assert (await client.call("dead_letter.list", {}))["dead_letters"] == []
        every = (await client.call("dead_letter.list", {"include_done": True}))["dead_letters"]
        assert {r["id"]: bool(r["replayed_at"] or r["discarded_at"]) for r in every} == {
            poison["id"]: True,
            garbage["id"]: True,
        }
        with pytest.raises(ApiError) as err:
            await client.call("dead_letter.replay", {"id": garbage["id"]})
        assert err.value.code == "not_applicable"
        with pytest.raises(ApiError) as err:
            await client.call("dead_letter.get", {"id": 999_999})
        assert err.value.code == "not_found" and "999999" in err.value.message


async def test_a_dead_letters_raw_message_is_fetched_in_parts(settings: Settings, tmp_path: Path) -> None:
    async with running_stack(settings, tmp_path) as (_stack, client):
        # Near the server's max payload: base64 in a JSON reply could never hold it whole.
        raw = b"\xff\x00binary" + os.urandom(client.nc.max_payload - 1024 * 1024)
        js = client.nc.jetstream()
        await js.publish(trigger_subject(settings, "any"), raw, headers={"Nats-Msg-Id": "bin-1"})
        rows = await dead_letters(client, 1)
        assert len(rows) == 1 and rows[0]["payload_bytes"] == len(raw)
        dl_id = rows[0]["id"]
        first = await client.call("dead_letter.get", {"id": dl_id}, timeout=60)
        assert first["payload_encoding"] == "base64" and first["payload_next_offset"] is not None
        assert raw.startswith(base64.b64decode(first["payload"]))
        # A part from an offset (what a message larger than one reply is read with).
        tail = len(raw) - 1000
        rest = await client.call("dead_letter.get", {"id": dl_id, "payload_offset": tail}, timeout=60)
        assert base64.b64decode(rest["payload"]) == raw[tail:] and rest["payload_next_offset"] is None
        with pytest.raises(ApiError) as err:
            await client.call("dead_letter.get", {"id": dl_id, "payload_offset": len(raw) + 1})
        assert err.value.code == "bad_request" and "payload_offset" in err.value.message
        target = tmp_path / "raw.bin"
        out = cli(settings, "dead-letters", "show", str(dl_id), "--raw", str(target))
        assert out.returncode == 0, out.stderr
        assert target.read_bytes() == raw  # every part, in order
