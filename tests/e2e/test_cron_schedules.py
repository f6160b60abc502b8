"""Cron triggers as real processes with an injected clock (``LEGATO_TEST_CRON_CLOCK_FILE``: a file holding the
time the cron loop takes as now), so no test sleeps through real minutes: two trigger services firing at
once start each scheduled time exactly once (counted by the lines the step itself appends), and
workflow pause/resume holds fires per the catch-up policy."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from legato.client import LegatoClient
from legato.config.settings import Settings
from legato.devstack.processes import ServiceProcess, Stack
from legato.protocol.ids import instance_id_for
from tests.support.stack import wait_api, wait_for

T0 = datetime(2026, 6, 1, 0, 0, 30, tzinfo=UTC)


def minutely(wf: str, out: Path, catch_up: str) -> str:
    return f"""
id: {wf}
run_strategy: {{type: parallel, max_concurrency: 50}}
params:
  fire: {{type: string, default: "api"}}
triggers:
  - {{type: cron, id: every, cron: "* * * * *", catch_up: {catch_up}, params: {{fire: "${{trigger.fire_time}}"}}}}
steps:
  - id: append
    type: shell
    command: 'echo "$LEGATO_PARAM_FIRE" >> {out}'
"""


def set_clock(path: Path, now: datetime) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(now.isoformat())
    os.replace(tmp, path)


def fire_id(wf: str, fire: datetime) -> str:
    return instance_id_for(wf, f"cron:every:{fire.astimezone(UTC).isoformat()}")


@asynccontextmanager
async def cron_stack(
    settings: Settings, tmp_path: Path, *, triggers: int
) -> AsyncIterator[tuple[Path, LegatoClient]]:
    clock = tmp_path / "clock"
    set_clock(clock, T0)
    stack = Stack(settings, tmp_path, extra_env={"LEGATO_TEST_CRON_CLOCK_FILE": str(clock)})
    for i in range(1, triggers):
        stack.services[f"trigger{i}"] = ServiceProcess(
            f"trigger{i}", "legato.trigger", [], stack.env, tmp_path
        )
    stack.start()
    client = await LegatoClient.connect(settings.nats_url, namespace=settings.namespace, actor="test")
    try:
        await wait_api(client)
        yield clock, client
    except BaseException:
        print(stack.logs())
        raise
    finally:
        await client.close()
        for i in range(1, triggers):  # Stack.stop knows only the services it names itself
            await asyncio.to_thread(stack.services[f"trigger{i}"].terminate)
        await asyncio.to_thread(stack.stop)


async def wait_cursor(settings: Settings, wf: str, timeout: float = 30.0) -> None:
    """The trigger has seen the workflow (its cursor starts at the injected now)."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        deadline = time.monotonic() + timeout
        while not await conn.fetchval("SELECT 1 FROM cron_cursor WHERE workflow_id = $1", wf):
            assert time.monotonic() < deadline, f"cron never saw {wf}"
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def runs(client: LegatoClient, wf: str) -> list[dict[str, Any]]:
    res = await client.call("instance.list", {"workflow_id": wf, "limit": 100})
    return list(res["instances"])


async def wait_runs(client: LegatoClient, wf: str, n: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = await runs(client, wf)
        if len(found) >= n:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"{wf}: {len(found)} runs, expected {n}: {found}")


@pytest.mark.slow
async def test_two_trigger_services_fire_each_time_exactly_once(settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "fires.txt"
    async with cron_stack(settings, tmp_path, triggers=2) as (clock, client):
        await client.push(minutely("tick", out, "all"))
        await wait_cursor(settings, "tick")
        fires = [T0.replace(second=0) + timedelta(minutes=k) for k in range(1, 7)]
        for k in range(0, len(fires), 2):
            # each step jumps two minutes: both replicas race on a catch-up of two fires too
            set_clock(clock, fires[min(k + 1, len(fires) - 1)] + timedelta(seconds=1))
            for f in fires[k : k + 2]:
                info = await wait_for(client, fire_id("tick", f), timeout=60)
                assert info["status"] == "succeeded", info
        await asyncio.sleep(3.0)  # several more rounds of both replicas at the same now
        lines = out.read_text().split()
        assert sorted(lines) == sorted(f.isoformat() for f in fires), lines  # each once, none twice
        assert len(await runs(client, "tick")) == len(fires)


@pytest.mark.slow
async def test_pause_holds_fires_per_policy_and_resume_catches_up(settings: Settings, tmp_path: Path) -> None:
    outs = {p: tmp_path / f"{p}.txt" for p in ("none", "latest", "all")}
    async with cron_stack(settings, tmp_path, triggers=1) as (clock, client):
        for policy, out in outs.items():
            await client.push(minutely(f"wf-{policy}", out, policy))
            await wait_cursor(settings, f"wf-{policy}")
            res = await client.call("workflow.pause", {"workflow_id": f"wf-{policy}", "reason": "db upgrade"})
            assert res["changed"] and res["pause"]["by"] == "test" and res["pause"]["reason"] == "db upgrade"
        again = await client.call("workflow.pause", {"workflow_id": "wf-all", "reason": "other"})
        assert not again["changed"] and again["pause"]["reason"] == "db upgrade"  # idempotent

        # a run started by hand while paused waits, and says why
        manual = await client.start("wf-all", {"fire": "manual"})
        status = await client.call("workflow.status", {"workflow_id": "wf-all"})
        assert status["state"] == "paused"
        assert status["pause"]["by"] == "test" and status["pause"]["reason"] == "db upgrade"
        deadline = time.monotonic() + 30
        while not status["queued_runs"]:
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.2)
            status = await client.call("workflow.status", {"workflow_id": "wf-all"})
        why = status["queued_runs"][0]["reason"]
        assert why["code"] == "paused" and why["message"] == "workflow paused by test: db upgrade", why

        # three fires fall due while paused
        fires = [T0.replace(second=0) + timedelta(minutes=k) for k in (1, 2, 3)]
        set_clock(clock, fires[-1] + timedelta(seconds=5))
        skipped = await wait_runs(client, "wf-none", 3)
        assert {r["status"] for r in skipped} == {"skipped"}
        assert {r["reason"]["code"] for r in skipped} == {"paused"}
        assert skipped[0]["error"] == "workflow paused by test: db upgrade"
        await asyncio.sleep(3.0)
        assert await runs(client, "wf-latest") == []  # held until resume
        assert [r["instance_id"] for r in await runs(client, "wf-all")] == [manual.instance_id]

        for policy in outs:
            res = await client.call("workflow.resume", {"workflow_id": f"wf-{policy}"})
            assert res["changed"] and res["pause"] is None
        for fire in fires:
            assert (await wait_for(client, fire_id("wf-all", fire)))["status"] == "succeeded"
        assert (await wait_for(client, manual.instance_id))["status"] == "succeeded"
        assert (await wait_for(client, fire_id("wf-latest", fires[-1])))["status"] == "succeeded"
        latest = await wait_runs(client, "wf-latest", 3)
        assert sorted(r["status"] for r in latest) == ["skipped", "skipped", "succeeded"]
        await asyncio.sleep(2.0)
        assert sorted(outs["all"].read_text().split()) == sorted([*(f.isoformat() for f in fires), "manual"])
        assert outs["latest"].read_text().split() == [fires[-1].isoformat()]
        assert not outs["none"].exists()
        status = await client.call("workflow.status", {"workflow_id": "wf-all"})
        assert status["state"] == "active" and status["pause"] is None

        # an unknown workflow is a clear error, not a traceback
        with pytest.raises(Exception, match="unknown workflow 'nope'"):
            await client.call("workflow.pause", {"workflow_id": "nope", "reason": "x"})
