"""Replies stay within the server's max payload and lists page: a run with more than 1,000 steps shows
every step's real status, maximum-size definitions and big signals do not break lists."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from legato.client import ApiError
from legato.config.settings import Settings
from tests.support.stack import running_stack, wait_for


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LEGATO_NATS_URL": settings.nats_url, "LEGATO_NAMESPACE": settings.namespace}
    return subprocess.run(
        [sys.executable, "-m", "legato.cli.main", *args], env=env, capture_output=True, text=True, timeout=120
    )


def wide_workflow(steps: int) -> str:
    body = "".join(f"  - {{id: s{i:05d}, type: noop}}\n" for i in range(steps))
    return f"id: wide\nrun_strategy: {{type: parallel, max_concurrency: 5}}\nsteps:\n{body}"


async def test_show_of_a_run_with_more_than_1000_steps_counts_and_pages_them_all(
    settings: Settings, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path) as (_stack, client):
        await client.push(wide_workflow(1500))
        run = await client.start("wide")
        info = await wait_for(client, run.instance_id, timeout=180)
        assert info["status"] == "succeeded", info["error"]
        assert info["steps_total"] == 1500 and info["step_counts"] == {"succeeded": 1500}
        assert 0 < len(info["steps"]) <= 1000 and info["steps_next"] == len(info["steps"])
        rest = await client.get(run.instance_id, steps_offset=info["steps_next"])
        seen = info["steps"] + rest["steps"]
        assert rest["steps_next"] is None
        assert [s["step_id"] for s in seen] == [f"s{i:05d}" for i in range(1500)]
        assert {s["status"] for s in seen} == {"succeeded"}

        out = cli(settings, "show", run.instance_id)
        assert out.returncode == 0, out.stderr
        assert "steps: 1500 (1500 succeeded)" in out.stdout
        lines = [line.split() for line in out.stdout.splitlines() if line.startswith("s0")]
        assert len(lines) == 1500 and all(parts[1] == "succeeded" for parts in lines)


def huge_workflow(workflow_id: str, size: int) -> str:
    # A definition near the maximum size: most of it a description.
    return (
        f"id: {workflow_id}\n"
        f"description: {'d' * size}\n"
        "run_strategy: {type: parallel, max_concurrency: 5}\n"
        "steps:\n  - {id: only, type: noop}\n"
    )


async def test_maximum_size_definitions_do_not_break_workflow_list_or_show(
    settings: Settings, tmp_path: Path
) -> None:
    from legato.core.loader import MAX_DEFINITION_BYTES

    async with running_stack(settings, tmp_path) as (_stack, client):
        size = MAX_DEFINITION_BYTES - 1000
        for wid in ("huge-a", "huge-b"):
            await client.call("workflow.push", {"definition": huge_workflow(wid, size)}, timeout=120)
        await client.push(wide_workflow(1).replace("id: wide", "id: small"))
        listed = await client.call("workflow.list", {}, timeout=60)
        assert [w["workflow_id"] for w in listed["workflows"]] == ["huge-a", "huge-b", "small"]
        desc = listed["workflows"][0]["description"]
        assert desc.startswith("ddd") and desc.endswith(f"…[truncated: {size} bytes]") and len(desc) < 2000
        shown = await client.call("workflow.get", {"workflow_id": "huge-a"}, timeout=60)
        assert shown["workflow_id"] == "huge-a"
        assert "…[truncated: " in shown["source"]  # the rest of the reply still arrives
        out = cli(settings, "workflow", "list")
        assert out.returncode == 0, out.stderr
        assert all(wid in out.stdout for wid in ("huge-a", "huge-b", "small"))


async def test_big_signals_do_not_break_signal_list_and_lists_page_by_bytes(
    settings: Settings, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path) as (_stack, client):
        # Signals are capped below NATS's payload (the stream's max message size): one over it is a clear
        # error at the API, never a stored half or a timeout.
        with pytest.raises(ApiError) as refused:
            await client.send_signal("bulky", {"blob": "x" * (2 * 1024 * 1024)}, signal_id="too-big")
        assert refused.value.code == "request_too_large" and "the limit is 262144" in refused.value.message
        big = "x" * (200 * 1024)  # over the per-field limit of lists: shown truncated
        for i in range(4):
            await client.send_signal("bulky", {"blob": big, "i": i}, signal_id=f"big-{i}")
        medium = "m" * (60 * 1024)  # under the per-field limit: whole rows, cut into pages by bytes
        for i in range(300):
            await client.send_signal("medium", {"blob": medium, "i": i}, signal_id=f"med-{i}")

        async def stored(name: str, count: int) -> list[dict[str, object]]:
            import asyncio
            import time

            deadline = time.monotonic() + 120
            while True:
                res = await client.call("signal.list", {"name": name, "limit": 1000}, timeout=60)
                if len(res["signals"]) >= count or time.monotonic() > deadline:
                    return res["signals"]  # type: ignore[no-any-return]
                await asyncio.sleep(0.5)

        bulky = await stored("bulky", 4)
        assert len(bulky) == 4
        assert all(s["params"]["truncated"] is True for s in bulky)  # type: ignore[index]
        # Every medium signal stored by the router first: a page is then cut by bytes, not by what exists.
        db = await asyncpg.connect(settings.database_url)
        try:
            async with asyncio.timeout(120):
                while await db.fetchval("SELECT count(*) FROM signal WHERE name = 'medium'") < 300:
                    await asyncio.sleep(0.2)
        finally:
            await db.close()
        first = await client.call("signal.list", {"name": "medium", "limit": 1000}, timeout=60)
        page = first["signals"]
        assert 0 < len(page) < 300 and first["next"] is not None  # cut by the byte budget, not the limit
        assert all(s["params"]["blob"] == medium for s in page)
        out = cli(settings, "signal", "list", "medium", "--limit", "300", "--json")
        assert out.returncode == 0, out.stderr
        import json

        ids = [s["id"] for s in json.loads(out.stdout)["signals"]]
        assert sorted(ids) == sorted(f"med-{i}" for i in range(300))


async def test_instances_limit_is_not_capped_at_1000(settings: Settings, tmp_path: Path) -> None:
    async with running_stack(settings, tmp_path) as (_stack, client):
        await client.push(wide_workflow(1).replace("max_concurrency: 5", "max_concurrency: 1000"))
        import asyncio

        started = []
        for _ in range(11):
            started += await asyncio.gather(*(client.start("wide") for _ in range(100)))
        for run in started:
            await wait_for(client, run.instance_id, timeout=120)
        out = cli(settings, "instances", "wide", "--limit", "1100", "--json")
        assert out.returncode == 0, out.stderr
        import json

        assert len({r["instance_id"] for r in json.loads(out.stdout)["instances"]}) == 1100
