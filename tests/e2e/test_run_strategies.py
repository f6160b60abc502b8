"""Each run strategy, scripted: trigger timings x step outcomes, with the exact sequence of run events
the scheduler must record, what the API and CLI say about runs that do not run, and strategy changes.

Steps wait for a file holding their exit code (tests/support/strategy_real.py), so every scenario
waits on recorded state, never on timings.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from legato.client import ApiError
from legato.config.settings import Settings
from tests.support.auth import creds_for
from tests.support.strategy_model import check_history
from tests.support.strategy_real import RealSystem, RealWorld, gated_workflow


@pytest.fixture
def world(settings: Settings, tmp_path: Path) -> Iterator[RealWorld]:
    with RealWorld(settings, tmp_path) as w:
        yield w


def expect(system: RealSystem, **statuses: str) -> None:
    system.settle(statuses)
    assert system.statuses() == statuses


def history(system: RealSystem) -> list[str]:
    """Run events as 'name:event', in commit order."""
    return [f"{e.run}:{e.event}" for e in system.events()]


def api_error(world: RealWorld, endpoint: str, body: dict[str, Any]) -> ApiError:
    with pytest.raises(ApiError) as err:
        world.call(endpoint, body)
    return err.value


def cli(world: RealWorld, *args: str) -> str:
    env = {
        **os.environ,
        "LEGATO_NATS_URL": world.settings.nats_url,
        "LEGATO_NAMESPACE": world.settings.namespace,
        "USER": "operator-ada",  # the CLI's actor: who did it, in the timeline
    }
    seed = creds_for("operator-ada")  # with credentials the actor is proven by the signing key
    if seed:
        env["LEGATO_NATS_CREDS"] = seed
    done = subprocess.run(
        [sys.executable, "-m", "legato.cli.main", *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def get(system: RealSystem, name: str) -> dict[str, Any]:
    return system.world.call("instance.get", {"instance_id": system.ids[name]})


def wait_step(system: RealSystem, name: str, step: str, status: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = {x["step_id"]: x["status"] for x in get(system, name)["steps"]}
        if steps.get(step) == status:
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} of {name} is {steps.get(step)}, not {status}")


def test_sequential_runs_one_at_a_time_fifo_whatever_the_outcome(world: RealWorld) -> None:
    s = RealSystem(world, "seq", "sequential", 1)
    s.trigger("a")
    expect(s, a="running")
    s.trigger("b")
    expect(s, a="running", b="queued")
    s.trigger("c")
    expect(s, a="running", b="queued", c="queued")

    why = get(s, "c")["reason"]
    assert why["code"] == "queued" and why["position"] == 2
    assert why["behind"] == s.ids["b"] and why["held_by"] == [s.ids["a"]]
    assert f"queued at position 2 behind run {s.ids['b']}" in why["message"]
    listing = cli(world, "instances", "seq")
    assert "queued #2" in listing and "queued #1" in listing and s.ids["a"] in why["message"]

    s.finish("a", ok=False)
    expect(s, a="failed", b="running", c="queued")
    s.finish("b", ok=True)
    expect(s, a="failed", b="succeeded", c="running")
    s.finish("c", ok=True)
    expect(s, a="failed", b="succeeded", c="succeeded")
    assert history(s) == [
        "a:created", "a:started", "b:created", "c:created",
        "a:failed", "b:started", "b:succeeded", "c:started", "c:succeeded",
    ]  # fmt: skip


def test_strict_sequential_blocks_on_failure_until_unblock_or_a_successful_restart(world: RealWorld) -> None:
    s = RealSystem(world, "strict", "strict_sequential", 1)
    s.trigger("a")
    expect(s, a="running")
    s.trigger("b")
    expect(s, a="running", b="queued")
    s.finish("a", ok=False)
    expect(s, a="failed", b="queued")
    s.trigger("c")
    expect(s, a="failed", b="queued", c="queued")

    status = world.call("workflow.status", {"workflow_id": "strict"})
    assert status["state"] == "blocked" and status["blocked_by"] == s.ids["a"]
    why = get(s, "b")["reason"]
    assert why["code"] == "blocked" and why["blocked_by"] == s.ids["a"] and why["blocked_since"]
    assert f"blocked by failed run {s.ids['a']}" in why["message"]
    out = cli(world, "instances", "strict")
    assert "BLOCKED" in out and s.ids["a"] in out
    assert f"legato unblock {s.ids['a']}" in cli(world, "workflow", "status", "strict")

    # Unblocking a run that does not block is refused with what does.
    err = api_error(world, "instance.unblock", {"instance_id": s.ids["b"], "reason": "try"})
    assert err.code == "not_applicable" and s.ids["a"] in err.message
    # A restart that fails again keeps the queue blocked.
    s.restart("a")
    expect(s, a="running", b="queued", c="queued")
    s.finish("a", ok=False)
    expect(s, a="failed", b="queued", c="queued")
    # An operator unblock (here through the CLI) releases the queue; the failed run stays failed.
    cli(world, "unblock", s.ids["a"], "--reason", "known bad input")
    expect(s, a="failed", b="running", c="queued")
    assert world.call("workflow.status", {"workflow_id": "strict"})["state"] == "active"
    err = api_error(world, "workflow.unblock", {"workflow_id": "strict", "reason": "again"})
    assert err.code == "not_applicable" and "not blocked" in err.message

    # b fails: blocked again; restarting b and succeeding releases the queue.
    s.finish("b", ok=False)
    expect(s, a="failed", b="failed", c="queued")
    s.restart("b")
    expect(s, a="failed", b="running", c="queued")
    s.finish("b", ok=True)
    expect(s, a="failed", b="succeeded", c="running")
    s.finish("c", ok=True)
    expect(s, a="failed", b="succeeded", c="succeeded")
    assert history(s) == [
        "a:created", "a:started", "b:created", "a:failed", "c:created",
        "a:restart_requested", "a:started", "a:failed", "a:unblocked", "b:started",
        "b:failed", "b:restart_requested", "b:started", "b:succeeded", "c:started", "c:succeeded",
    ]  # fmt: skip
    unblock = next(t for t in get(s, "a")["timeline"] if t["event"] == "unblocked")
    assert unblock["actor"] == "operator-ada" and "known bad input" in unblock["message"]


def test_first_only_records_a_dropped_trigger_as_skipped_and_deduplicates_it(world: RealWorld) -> None:
    s = RealSystem(world, "first", "first_only", 1)
    s.trigger("a")
    expect(s, a="running")
    s.trigger("b")
    expect(s, a="running", b="skipped")
    skipped = get(s, "b")
    assert skipped["reason"] == {"code": "first_only", "running": s.ids["a"]}
    assert s.ids["a"] in skipped["error"]
    again = world.call("instance.start", {"workflow_id": "first", "params": {}, "request_id": "b"})
    assert again["instance_id"] == s.ids["b"] and again["duplicate"] and again["status"] == "skipped"
    s.finish("a", ok=True)
    expect(s, a="succeeded", b="skipped")
    s.trigger("c")
    expect(s, a="succeeded", b="skipped", c="running")
    s.finish("c", ok=False)
    expect(s, a="succeeded", b="skipped", c="failed")
    assert history(s) == [
        "a:created", "a:started", "b:created", "b:skipped", "a:succeeded", "c:created", "c:started", "c:failed",
    ]  # fmt: skip


def test_last_only_stops_the_running_run_and_runs_the_newest(world: RealWorld) -> None:
    s = RealSystem(world, "last", "last_only", 1)
    s.trigger("a")
    expect(s, a="running")
    s.trigger("b")
    expect(s, a="stopped", b="running")
    stopped = get(s, "a")
    assert stopped["reason"]["code"] == "superseded" and stopped["reason"]["by"] == s.ids["b"]
    assert stopped["error"] == f"superseded by {s.ids['b']}"
    assert {x["step_id"]: x["status"] for x in stopped["steps"]}["work"] == "stopped"
    s.trigger("c")
    expect(s, a="stopped", b="stopped", c="running")
    s.finish("c", ok=True)
    expect(s, a="stopped", b="stopped", c="succeeded")
    assert history(s) == [
        "a:created", "a:started", "b:created", "a:stopped", "b:started",
        "c:created", "b:stopped", "c:started", "c:succeeded",
    ]  # fmt: skip


def test_serial_latest_only_replaces_the_queued_run_and_never_kills_the_running_one(world: RealWorld) -> None:
    s = RealSystem(world, "latest", "serial_latest_only", 1)
    s.trigger("a")
    expect(s, a="running")
    s.trigger("b")
    expect(s, a="running", b="queued")
    s.trigger("c")
    expect(s, a="running", b="stopped", c="queued")
    assert get(s, "b")["reason"] == {"code": "superseded", "by": s.ids["c"]}
    s.finish("a", ok=False)  # a failure does not block
    expect(s, a="failed", b="stopped", c="running")
    s.finish("c", ok=True)
    expect(s, a="failed", b="stopped", c="succeeded")
    assert history(s) == [
        "a:created", "a:started", "b:created", "c:created", "b:stopped",
        "a:failed", "c:started", "c:succeeded",
    ]  # fmt: skip


def test_parallel_runs_up_to_n_and_zero_pauses(world: RealWorld) -> None:
    s = RealSystem(world, "par", "parallel", 2)
    for name in "abcd":
        s.trigger(name)
    expect(s, a="running", b="running", c="queued", d="queued")
    why = get(s, "d")["reason"]
    assert why["position"] == 2 and sorted(why["held_by"]) == sorted([s.ids["a"], s.ids["b"]])
    assert "concurrency limit 2 held by runs" in why["message"]
    s.finish("b", ok=False)  # others go on
    expect(s, a="running", b="failed", c="running", d="queued")

    world.call(
        "workflow.set_run_strategy", {"workflow_id": "par", "run_strategy": "parallel", "max_concurrency": 0}
    )
    s.trigger("e")
    s.finish("a", ok=True)
    s.finish("c", ok=True)
    expect(s, a="succeeded", b="failed", c="succeeded", d="queued", e="queued")
    assert world.call("workflow.status", {"workflow_id": "par"})["state"] == "paused"
    assert get(s, "e")["reason"]["code"] == "paused"

    world.call(
        "workflow.set_run_strategy", {"workflow_id": "par", "run_strategy": "parallel", "max_concurrency": 3}
    )
    expect(s, a="succeeded", b="failed", c="succeeded", d="running", e="running")
    s.finish("d", ok=True)
    s.finish("e", ok=True)
    expect(s, a="succeeded", b="failed", c="succeeded", d="succeeded", e="succeeded")
    check_history(s.events(), strategy="parallel", limit=2, triggers=5)


def test_strategy_changes_apply_to_queued_runs_and_refuse_what_cannot_apply(world: RealWorld) -> None:
    s = RealSystem(world, "change", "sequential", 1)
    for name in "abc":
        s.trigger(name)
    expect(s, a="running", b="queued", c="queued")
    err = api_error(
        world, "workflow.set_run_strategy", {"workflow_id": "change", "run_strategy": "first_only"}
    )
    assert err.code == "conflict" and "stop the extra runs first" in err.message
    assert err.details == {"active_runs": 3}
    # The same for a new version that says first_only: refused, nothing stored.
    pushed = gated_workflow("change", "first_only", 1, world.gates)
    err = api_error(world, "workflow.push", {"definition": pushed})
    assert err.code == "conflict" and "stop the extra runs first" in err.message
    assert world.call("workflow.get", {"workflow_id": "change"})["latest_version"] == 1

    # serial_latest_only at once keeps only the newest queued run; the running one is not disturbed.
    world.call("workflow.set_run_strategy", {"workflow_id": "change", "run_strategy": "serial_latest_only"})
    expect(s, a="running", b="stopped", c="queued")
    # parallel(2) starts the queued run at once.
    world.call(
        "workflow.set_run_strategy",
        {"workflow_id": "change", "run_strategy": "parallel", "max_concurrency": 2},
    )
    expect(s, a="running", b="stopped", c="running")
    # strict_sequential while two run: a failure blocks, and a restart of the blocker waits for a slot.
    world.call("workflow.set_run_strategy", {"workflow_id": "change", "run_strategy": "strict_sequential"})
    s.trigger("d")
    expect(s, a="running", b="stopped", c="running", d="queued")
    s.finish("a", ok=False)
    expect(s, a="failed", b="stopped", c="running", d="queued")
    s.restart("a")
    expect(s, a="queued", b="stopped", c="running", d="queued")  # c still holds the one slot
    s.finish("c", ok=True)
    expect(s, a="running", b="stopped", c="succeeded", d="queued")
    s.finish("a", ok=True)
    expect(s, a="succeeded", b="stopped", c="succeeded", d="running")
    s.finish("d", ok=True)
    expect(s, a="succeeded", b="stopped", c="succeeded", d="succeeded")
    world.call("workflow.set_run_strategy", {"workflow_id": "change", "run_strategy": "first_only"})
    assert world.call("workflow.get", {"workflow_id": "change"})["run_strategy"] == "first_only"


def test_operator_actions_record_who_why_when_are_idempotent_and_refuse_what_does_not_apply(
    world: RealWorld,
) -> None:
    s = RealSystem(world, "ops", "parallel", 5, steps=("extract", "load", "report"))
    for name in "abcd":
        s.trigger(name)
    expect(s, a="running", b="running", c="running", d="running")

    # stop, twice with the same request id: applied once.
    body = {"instance_id": s.ids["a"], "reason": "wrong params", "request_id": "stop-a"}
    first = world.call("instance.stop", body)
    expect(s, a="stopped", b="running", c="running", d="running")
    assert first["action_id"] == "stop-a"
    err = api_error(world, "instance.stop", body)
    assert err.code == "not_applicable" and "stopped" in err.message
    stopped = get(s, "a")
    assert stopped["reason"] == {"code": "operator", "action": "stop", "by": "machine", "why": "wrong params"}
    ends = [t for t in stopped["timeline"] if t["event"] == "stopped"]
    assert len(ends) == 1 and ends[0]["actor"] == "machine" and ends[0]["at"]

    # A reason is required.
    assert api_error(world, "instance.kill", {"instance_id": s.ids["b"], "reason": " "}).code == "bad_request"
    world.call("instance.kill", {"instance_id": s.ids["b"], "reason": "runaway"})
    expect(s, a="stopped", b="stopped", c="running", d="running")

    # skip a waiting step and go on; restart from a named step reuses the outputs before it.
    s.finish("c", ok=True, step="extract")
    wait_step(s, "c", "load", "running")
    world.call(
        "instance.skip_step", {"instance_id": s.ids["c"], "step_id": "load", "reason": "not needed today"}
    )
    s.finish("c", ok=True, step="report")
    expect(s, a="stopped", b="stopped", c="succeeded", d="running")
    steps = {x["step_id"]: x for x in get(s, "c")["steps"]}
    assert steps["load"]["status"] == "skipped" and steps["report"]["status"] == "succeeded"

    cli(world, "restart", s.ids["c"], "--from", "load", "--reason", "reload")
    expect(s, a="stopped", b="stopped", c="running", d="running")
    s.finish("c", ok=True, step="load")
    s.finish("c", ok=True, step="report")
    expect(s, a="stopped", b="stopped", c="succeeded", d="running")
    steps = {x["step_id"]: x for x in get(s, "c")["steps"]}
    # extract kept (not re-run); load and report ran again (load's first attempt was cancelled by the skip)
    assert [len(steps[k]["attempts"]) for k in ("extract", "load", "report")] == [1, 2, 2]

    # restart of a failed run re-runs only its failed step.
    s.finish("d", ok=True, step="extract")
    s.finish("d", ok=False, step="load")
    expect(s, a="stopped", b="stopped", c="succeeded", d="failed")
    s.restart("d")
    s.finish("d", ok=True, step="load")
    s.finish("d", ok=True, step="report")
    expect(s, a="stopped", b="stopped", c="succeeded", d="succeeded")
    steps = {x["step_id"]: x for x in get(s, "d")["steps"]}
    assert [len(steps[k]["attempts"]) for k in ("extract", "load", "report")] == [1, 2, 1]
    assert get(s, "d")["run_number"] == 2

    # workflow-wide stop acts on every active run.
    s.trigger("e")
    s.trigger("f")
    expect(s, a="stopped", b="stopped", c="succeeded", d="succeeded", e="running", f="running")
    world.call("workflow.stop", {"workflow_id": "ops", "reason": "maintenance"})
    expect(s, a="stopped", b="stopped", c="succeeded", d="succeeded", e="stopped", f="stopped")
    err = api_error(world, "instance.restart", {"instance_id": s.ids["c"], "reason": "again"})
    assert err.code == "not_applicable" and "succeeded" in err.message


async def test_instance_get_answers_pending_from_another_api_process(
    settings: Settings, tmp_path: Path
) -> None:
    """A start accepted by one API process is `pending` (never not_found) in another one."""
    from legato.client import LegatoClient
    from tests.support.stack import Stack, wait_api

    stack = Stack(settings, tmp_path)
    stack["trigger"].start()  # the API only: nothing applies the start
    client = await LegatoClient.connect(settings.nats_url, namespace=settings.namespace, actor="test")
    try:
        await wait_api(client)
        await client.push("id: lonely\nsteps:\n  - {id: s, type: noop}\n")
        res = await client.start("lonely", request_id="r1")
        stack["trigger"].terminate()
        stack["trigger"].start()
        await wait_api(client)
        await asyncio.sleep(0)
        info = await client.get(res.instance_id)
        assert info["status"] == "pending" and info["workflow_id"] == "lonely"
    finally:
        await client.close()
        await asyncio.to_thread(stack.stop)
