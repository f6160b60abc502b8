"""foreach, subworkflow and loop steps driven by params, with real services."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from legato.client import LegatoClient
from legato.config.settings import Settings
from tests.support.stack import running_stack, wait_for

FANOUT = """
id: fanout
run_strategy: {type: parallel, max_concurrency: 10}
params:
  n: {type: int, default: 5}
  width: {type: int, default: 3}
  fail_on: {type: list, default: []}
  mode: {type: string, default: finish_others_then_fail}
steps:
  - id: prepare
    type: noop
  - id: each
    type: foreach
    depends_on: [prepare]
    foreach:
      over: "range(params.n)"
      as: k
      concurrency: 3
      on_failure: finish_others_then_fail
      steps:
        - id: work
          type: shell
          command: >-
            sleep 0.2; if [ -e "{marker}.$LEGATO_PARAM_K" ]; then exit 7; fi;
            echo "square=$(( $LEGATO_PARAM_K * $LEGATO_PARAM_K ))" >> "$LEGATO_OUTPUTS"
          outputs: [square]
  - id: total
    type: noop
    depends_on: [each]
    params:
      n_results: {expr: "len(steps.each.outputs.iterations)"}
"""


def foreach_wf(marker: Path, mode: str, concurrency: int = 3) -> str:
    return (
        FANOUT.replace("{marker}", str(marker))
        .replace("on_failure: finish_others_then_fail", f"on_failure: {mode}")
        .replace("concurrency: 3", f"concurrency: {concurrency}")
    )


def spans(db_rows: list[asyncpg.Record]) -> list[tuple[datetime, datetime]]:
    return [(r["started_at"], r["ended_at"]) for r in db_rows]


def max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    events = sorted(
        [(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1])
    )
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


async def attempts_of(settings: Settings, instance_id: str, step_id: str = "each") -> list[asyncpg.Record]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return await conn.fetch(
            "SELECT i.parent_iteration AS it, a.status, a.started_at, a.ended_at, i.id AS child "
            "FROM workflow_instance i JOIN step_attempt a ON a.instance_id = i.id "
            "WHERE i.parent_instance_id = $1 AND i.parent_step_id = $2 ORDER BY i.parent_iteration, a.attempt",
            instance_id,
            step_id,
        )
    finally:
        await conn.close()


def step(info: dict[str, Any], sid: str) -> dict[str, Any]:
    return {s["step_id"]: s for s in info["steps"]}[sid]


async def test_foreach_fans_out_from_params_in_order_within_concurrency(
    settings: Settings, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path, concurrency=16) as (_stack, client):
        await client.push(foreach_wf(tmp_path / "none", "fail"))
        res = await client.start("fanout", {"n": 8})
        info = await wait_for(client, res.instance_id, timeout=60)
        zero = await client.start("fanout", {"n": 0})
        empty = await wait_for(client, zero.instance_id)
        page = await client.call(
            "instance.iterations", {"instance_id": res.instance_id, "step_id": "each", "limit": 5}
        )
        page2 = await client.call(
            "instance.iterations",
            {"instance_id": res.instance_id, "step_id": "each", "after": page["next"], "limit": 5},
        )
        listed = await client.call("instance.list", {"workflow_id": "fanout"})
    assert info["status"] == "succeeded", info
    each = step(info, "each")
    assert each["outputs"]["iterations"] == [{"work": {"square": k * k}} for k in range(8)]
    assert each["progress"]["succeeded"] == 8 and each["progress"]["total"] == 8
    assert step(info, "total")["params"]["n_results"] == 8
    rows = await attempts_of(settings, res.instance_id)
    assert sorted(r["it"] for r in rows) == list(range(8))
    assert max_overlap(spans(rows)) <= 3
    assert empty["status"] == "succeeded" and step(empty, "each")["outputs"]["iterations"] == []
    assert [i["iteration"] for i in page["iterations"]] == [0, 1, 2, 3, 4] and page["next"] == 4
    assert [i["iteration"] for i in page2["iterations"]] == [5, 6, 7] and page2["next"] is None
    # Iterations are child runs: not listed among the workflow's runs by default.
    assert {r["instance_id"] for r in listed["instances"]} == {res.instance_id, zero.instance_id}


@pytest.mark.parametrize(
    ("mode", "expect_status", "expect_ran"),
    [
        ("fail", "failed", None),  # stops the others at once: fewer than all ran
        ("finish_others_then_fail", "failed", 10),
        ("ignore", "succeeded", 10),
    ],
)
async def test_foreach_failure_modes(
    settings: Settings, tmp_path: Path, mode: str, expect_status: str, expect_ran: int | None
) -> None:
    marker = tmp_path / "fail"
    (tmp_path / "fail.2").touch()
    async with running_stack(settings, tmp_path, concurrency=16) as (_stack, client):
        await client.push(foreach_wf(marker, mode, concurrency=2))
        res = await client.start("fanout", {"n": 10})
        info = await wait_for(client, res.instance_id, timeout=60)
    assert info["status"] == expect_status, info
    each = step(info, "each")
    rows = await attempts_of(settings, res.instance_id)
    ran = {r["it"] for r in rows}
    if expect_ran is None:
        assert len(ran) < 10 and 2 in ran
        assert step(info, "total")["status"] == "pending"
    else:
        assert ran == set(range(10))
    if mode == "ignore":
        assert each["outputs"]["iterations"][2] is None and each["outputs"]["failed"] == 1
        assert step(info, "total")["status"] == "succeeded"
    else:
        assert 2 in each["progress"]["failed_items"]


async def test_restart_of_failed_foreach_reruns_only_failed_iterations(
    settings: Settings, tmp_path: Path
) -> None:
    marker = tmp_path / "fail"
    for k in (1, 4):
        (tmp_path / f"fail.{k}").touch()
    async with running_stack(settings, tmp_path, concurrency=16) as (_stack, client):
        await client.push(foreach_wf(marker, "finish_others_then_fail"))
        res = await client.start("fanout", {"n": 6})
        first = await wait_for(client, res.instance_id, timeout=60)
        assert first["status"] == "failed"
        assert step(first, "each")["progress"]["failed_items"] == [1, 4]
        for k in (1, 4):
            (tmp_path / f"fail.{k}").unlink()
        await client.call("instance.restart", {"instance_id": res.instance_id, "reason": "fixed input"})
        await asyncio.sleep(0.5)
        again = await wait_for(client, res.instance_id, timeout=60)
    assert again["status"] == "succeeded" and again["run_number"] == 2
    rows = await attempts_of(settings, res.instance_id)
    runs_per_item: dict[int, int] = {}
    for r in rows:
        runs_per_item[r["it"]] = runs_per_item.get(r["it"], 0) + 1
    assert runs_per_item == {0: 1, 1: 2, 2: 1, 3: 1, 4: 2, 5: 1}
    assert step(again, "each")["outputs"]["iterations"] == [{"work": {"square": k * k}} for k in range(6)]
    assert (
        step(again, "prepare")["attempts"][0]["attempt"] == 1 and len(step(again, "prepare")["attempts"]) == 1
    )


CHILD = """
id: child-wf
run_strategy: sequential
params:
  x: {type: int, default: 1}
steps:
  - id: calc
    type: shell
    command: 'sleep {sleep}; echo "double=$(( $LEGATO_PARAM_X * 2 ))" >> "$LEGATO_OUTPUTS"'
"""

PARENT = """
id: parent-wf
run_strategy: {type: parallel, max_concurrency: 5}
params:
  x: {type: int, default: 21}
steps:
  - id: call
    type: subworkflow
    subworkflow: {workflow: child-wf, params: {x: "${params.x}"}}
  - id: after
    type: noop
    depends_on: [call]
    params:
      got: {expr: "steps.call.outputs.calc.double"}
"""


async def test_subworkflow_outputs_flow_back_and_skip_the_child_strategy(
    settings: Settings, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path, concurrency=16) as (_stack, client):
        await client.push(CHILD.replace("{sleep}", "0.5"))
        await client.push(PARENT)
        runs = [await client.start("parent-wf", {"x": x}) for x in (1, 2, 3)]
        infos = [await wait_for(client, r.instance_id, timeout=60) for r in runs]
        children = await client.call("instance.list", {"workflow_id": "child-wf", "include_children": True})
    assert [i["status"] for i in infos] == ["succeeded"] * 3
    assert [step(i, "after")["params"]["got"] for i in infos] == [2, 4, 6]
    kids = children["instances"]
    assert len(kids) == 3 and all(k["parent_instance_id"] for k in kids)
    # The child workflow is sequential, but child runs do not queue under it: they overlapped.
    conn = await asyncpg.connect(settings.database_url)
    try:
        rows = await conn.fetch(
            "SELECT started_at, ended_at FROM workflow_instance WHERE workflow_id = 'child-wf'"
        )
    finally:
        await conn.close()
    assert max_overlap(spans(rows)) >= 2


async def test_stopping_the_parent_stops_its_child_runs(settings: Settings, tmp_path: Path) -> None:
    async with running_stack(settings, tmp_path, concurrency=16) as (_stack, client):
        await client.push(CHILD.replace("{sleep}", "30"))
        await client.push(PARENT)
        res = await client.start("parent-wf", {"x": 5})
        await wait_for_child(client, "child-wf")
        await client.call("instance.stop", {"instance_id": res.instance_id, "reason": "no longer needed"})
        info = await wait_for(client, res.instance_id)
        kids = (await client.call("instance.list", {"workflow_id": "child-wf", "include_children": True}))[
            "instances"
        ]
        child = await wait_for(client, kids[0]["instance_id"], timeout=30)
    assert info["status"] == "stopped"
    assert child["status"] == "stopped"
    assert child["reason"]["code"] == "operator"


async def wait_for_child(client: LegatoClient, workflow: str, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        kids = await client.call(
            "instance.list", {"workflow_id": workflow, "include_children": True, "status": "running"}
        )
        if kids["instances"]:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"no running child run of {workflow}")


LOOP = """
id: until-green
run_strategy: sequential
params:
  needed: {type: int, default: 3}
steps:
  - id: retry_until_green
    type: loop
    loop:
      while: "iteration.index == 0 or iteration.outputs.check.attempt < params.needed"
      max_iterations: 10
      steps:
        - id: check
          type: shell
          params:
            n: {expr: "iteration.index + 1"}
          command: 'echo "attempt=$LEGATO_PARAM_N" >> "$LEGATO_OUTPUTS"'
  - id: done
    type: noop
    depends_on: [retry_until_green]
"""


async def test_loop_repeats_while_condition_holds_and_each_iteration_is_visible(
    settings: Settings, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path, concurrency=16) as (_stack, client):
        await client.push(LOOP)
        res = await client.start("until-green", {"needed": 3})
        info = await wait_for(client, res.instance_id, timeout=60)
        its = await client.call(
            "instance.iterations", {"instance_id": res.instance_id, "step_id": "retry_until_green"}
        )
    assert info["status"] == "succeeded", info
    loop = step(info, "retry_until_green")
    assert loop["outputs"] == {"iterations": 3, "last": {"check": {"attempt": 3}}}
    assert [i["iteration"] for i in its["iterations"]] == [0, 1, 2]
    assert all(i["status"] == "succeeded" for i in its["iterations"])


NESTED_INNER = """
id: inner
run_strategy: sequential
params:
  day: {type: string, default: "x"}
steps:
  - id: per_region
    type: foreach
    foreach:
      over: "['eu', 'us']"
      as: region
      concurrency: 2
      steps:
        - id: touch
          type: shell
          command: 'echo "key=$LEGATO_PARAM_DAY-$LEGATO_PARAM_REGION" >> "$LEGATO_OUTPUTS"'
"""

NESTED_OUTER = """
id: outer
run_strategy: sequential
steps:
  - id: days
    type: foreach
    foreach:
      over: "['d1', 'd2', 'd3']"
      as: day
      concurrency: 3
      subworkflow: {workflow: inner, params: {day: "${params.day}"}}
"""


async def test_foreach_inside_subworkflow_inside_foreach(settings: Settings, tmp_path: Path) -> None:
    async with running_stack(settings, tmp_path, concurrency=16) as (_stack, client):
        await client.push(NESTED_INNER)
        await client.push(NESTED_OUTER)
        res = await client.start("outer")
        info = await wait_for(client, res.instance_id, timeout=60)
    assert info["status"] == "succeeded", info
    days = step(info, "days")["outputs"]["iterations"]
    keys = [[r["touch"]["key"] for r in d["per_region"]["iterations"]] for d in days]
    assert keys == [["d1-eu", "d1-us"], ["d2-eu", "d2-us"], ["d3-eu", "d3-us"]]


BIG = """
id: big-fanout
run_strategy: sequential
params:
  n: {type: int, default: 10000}
steps:
  - id: each
    type: foreach
    foreach:
      over: "range(params.n)"
      concurrency: 500
      steps:
        - id: nothing
          type: noop
"""


@pytest.mark.slow
async def test_scheduler_kill_9_mid_foreach_runs_each_iteration_exactly_once(
    settings: Settings, tmp_path: Path
) -> None:
    n = 10_000
    async with running_stack(settings, tmp_path, concurrency=64) as (stack, client):
        await client.push(BIG)
        res = await client.start("big-fanout", {"n": n})
        conn = await asyncpg.connect(settings.database_url)
        try:
            for _ in range(600):
                done = await conn.fetchval(
                    "SELECT count(*) FROM workflow_instance WHERE parent_instance_id = $1 AND status = 'succeeded'",
                    res.instance_id,
                )
                if done >= n // 3:
                    break
                await asyncio.sleep(0.1)
            stack["scheduler"].kill9()
            await asyncio.sleep(1.0)
            stack["scheduler"].start()
            info = await wait_for(client, res.instance_id, timeout=300)
            per_iteration = await conn.fetch(
                "SELECT parent_iteration, count(*) AS runs FROM workflow_instance WHERE parent_instance_id = $1 "
                "GROUP BY parent_iteration",
                res.instance_id,
            )
            succeeded_attempts = await conn.fetchval(
                "SELECT count(*) FROM step_attempt a JOIN workflow_instance i ON i.id = a.instance_id "
                "WHERE i.parent_instance_id = $1 AND a.status = 'succeeded'",
                res.instance_id,
            )
        finally:
            await conn.close()
    assert info["status"] == "succeeded"
    assert len(per_iteration) == n and all(r["runs"] == 1 for r in per_iteration)
    assert succeeded_attempts == n
    assert step(info, "each")["progress"]["succeeded"] == n
