"""step_concurrency across runs of a workflow, and named concurrency tags across workflows."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

from legato.config.settings import Settings
from tests.support.stack import running_stack, wait_for

CAPPED = """
id: capped
run_strategy: {type: parallel, max_concurrency: 20}
step_concurrency: 2
steps:
  - id: work
    type: sleep
    duration: 0.4s
"""

WAREHOUSE = """
id: {id}
run_strategy: {type: parallel, max_concurrency: 20}
steps:
  - id: load
    type: sleep
    duration: 0.4s
    concurrency_tags: [warehouse]
"""


def max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    events = sorted(
        [(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1])
    )
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def intervals(infos: list[dict[str, Any]], step: str) -> list[tuple[datetime, datetime]]:
    out = []
    for info in infos:
        s = {x["step_id"]: x for x in info["steps"]}[step]
        a = s["attempts"][-1]
        out.append((datetime.fromisoformat(a["started_at"]), datetime.fromisoformat(a["ended_at"])))
    return out


async def test_step_concurrency_caps_steps_across_runs(settings: Settings, tmp_path: Path) -> None:
    async with running_stack(settings, tmp_path, concurrency=16) as (_stack, client):
        await client.push(CAPPED)
        runs = [await client.start("capped") for _ in range(6)]
        await asyncio.sleep(0.3)
        waiting = await client.get(runs[-1].instance_id)
        for _ in range(100):  # under load the run may not be created yet (accepted, "pending")
            if waiting["status"] != "pending":
                break
            await asyncio.sleep(0.1)
            waiting = await client.get(runs[-1].instance_id)
        infos = [await wait_for(client, r.instance_id) for r in runs]
    assert all(i["status"] == "succeeded" for i in infos)
    assert max_overlap(intervals(infos, "work")) <= 2
    step = {s["step_id"]: s for s in waiting["steps"]}.get("work")  # none yet while the run is pending
    if step is not None and step["status"] == "waiting":
        assert step["reason"]["code"] == "waiting_for_step_concurrency"


async def test_named_tag_caps_steps_across_workflows_and_reports_why(
    settings: Settings, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path, concurrency=16) as (_stack, client):
        res = await client.call("tag.set", {"tag": "warehouse", "limit": 2})
        assert res["limit"] == 2
        await client.push(WAREHOUSE.replace("{id}", "wa"))
        await client.push(WAREHOUSE.replace("{id}", "wb"))
        runs = []
        for i in range(4):
            runs.append(await client.start("wa", request_id=f"a{i}"))
            runs.append(await client.start("wb", request_id=f"b{i}"))
        # Look until a step is seen waiting (a fixed pause missed it on a loaded machine).
        deadline = asyncio.get_running_loop().time() + 20
        while True:
            snapshot = [await client.get(r.instance_id) for r in runs]
            tags = await client.call("tag.list", {})
            seen = any(s["status"] == "waiting" for info in snapshot for s in info["steps"])
            if seen or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
        infos = [await wait_for(client, r.instance_id) for r in runs]
    assert all(i["status"] == "succeeded" for i in infos)
    assert max_overlap(intervals(infos, "load")) <= 2
    waits = [s for info in snapshot for s in info["steps"] if s["status"] == "waiting"]
    assert waits, "some steps must have waited for the tag"
    assert all(
        w["reason"]["code"] == "waiting_for_permit" and w["reason"]["tag"] == "warehouse" for w in waits
    )
    assert "warehouse" in waits[0]["reason"]["message"]
    assert tags["tags"][0]["tag"] == "warehouse" and tags["tags"][0]["in_use"] <= 2
