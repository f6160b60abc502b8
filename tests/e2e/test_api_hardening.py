"""API hardening through the public interfaces: nothing accepted is lost or left pending, idempotency keys
conflict on a different request, actions naming an unknown step are errors."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from legato.bus.topology import Topology
from legato.client import ApiError
from legato.config.settings import Settings
from legato.protocol import encode
from legato.protocol.messages import StartRun, TriggerInfo
from tests.support.stack import running_stack, wait_for


def trigger_subject(settings: Settings, workflow_id: str) -> str:
    """Where the trigger service would publish for this workflow (the stack's partition count)."""
    return Topology(settings.namespace, settings.partitions).trigger_subject(workflow_id)


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LEGATO_NATS_URL": settings.nats_url, "LEGATO_NAMESPACE": settings.namespace}
    return subprocess.run(
        [sys.executable, "-m", "legato.cli.main", *args], env=env, capture_output=True, text=True, timeout=60
    )


ONE = """
id: one
run_strategy: {type: parallel, max_concurrency: 10}
params:
  n: {type: int, default: 1}
steps:
  - id: only
    type: noop
"""

SLOW = """
id: slow
run_strategy: {type: parallel, max_concurrency: 10}
steps:
  - id: nap
    type: shell
    command: 'sleep 30'
  - id: after
    type: noop
    depends_on: [nap]
"""


async def test_unknown_version_is_refused_before_a_run_id_is_given(
    settings: Settings, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path) as (_stack, client):
        await client.push(ONE)
        for version in (0, -3):
            with pytest.raises(ApiError) as err:
                await client.call("instance.start", {"workflow_id": "one", "version": version})
            assert err.value.code == "bad_request" and "version" in err.value.message
        with pytest.raises(ApiError) as err:
            await client.call("instance.start", {"workflow_id": "one", "version": 99})
        assert err.value.code == "not_found" and "no version 99" in err.value.message
        out = cli(settings, "start", "one", "--version", "0", "--wait", "--timeout", "30")
        assert out.returncode == 1 and "version: must be >= 1, got 0" in out.stderr, out
        listed = await client.call("instance.list", {"workflow_id": "one"})
        assert listed["instances"] == []


async def test_a_start_the_scheduler_cannot_apply_fails_its_run_never_pending(
    settings: Settings, tmp_path: Path
) -> None:
    """A start that reaches the scheduler with a version that does not exist (another API replica, a
    replay, a deleted version) ends its run failed with the error instead of being dead-lettered, and
    does not take the starts of the same batch with it."""
    async with running_stack(settings, tmp_path) as (_stack, client):
        await client.push(ONE)
        js = client.nc.jetstream()
        subject = trigger_subject(settings, "one")
        for iid, version in (("bad-0", 0), ("bad-99", 99)):
            msg = StartRun(
                workflow_id="one",
                trigger_key=f"test:{iid}",
                instance_id=iid,
                trigger=TriggerInfo(kind="api", by="test"),
                params={},
                version=version,
                requested_at=time.time(),
            )
            await js.publish(subject, encode(msg), headers={"Nats-Msg-Id": f"start:{iid}"})
        good = await client.start("one")
        for iid, version in (("bad-0", 0), ("bad-99", 99)):
            info = await client.wait(iid, timeout=60)
            assert info.status == "failed", info
            assert f"no version {version}" in (info.error or "")
        assert (await wait_for(client, good.instance_id))["status"] == "succeeded"
        shown = cli(settings, "show", "bad-99")
        assert shown.returncode == 0 and "FAILED" in shown.stdout.upper() and "no version 99" in shown.stdout
        dead = await client.call("dead_letter.list", {})
        assert dead["dead_letters"] == [], dead


async def test_request_id_reused_with_a_different_request_is_a_conflict(
    settings: Settings, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path) as (_stack, client):
        await client.push(ONE)
        first = await client.start("one", {"n": 1}, request_id="key-1")
        assert first.duplicate is False
        # Before and after the scheduler applied it: same request -> same run, duplicate.
        again = await client.start("one", {"n": 1}, request_id="key-1")
        assert again.duplicate is True and again.instance_id == first.instance_id
        with pytest.raises(ApiError) as err:
            await client.start("one", {"n": 2}, request_id="key-1")
        assert err.value.code == "conflict" and "key-1" in err.value.message
        assert err.value.details["instance_id"] == first.instance_id
        info = await wait_for(client, first.instance_id)
        assert info["status"] == "succeeded" and info["params"] == {"n": 1}
        again = await client.start("one", {"n": 1}, request_id="key-1")
        assert again.duplicate is True and again.status == "succeeded"
        with pytest.raises(ApiError) as err:
            await client.start("one", {"n": 1}, request_id="key-1", version=1)
        assert err.value.code == "conflict"  # pinning a version is a different request
        with pytest.raises(ApiError) as err:
            await client.start("one", {"n": 3}, request_id="key-1")
        assert err.value.code == "conflict"
        listed = await client.call("instance.list", {"workflow_id": "one"})
        assert len(listed["instances"]) == 1


async def test_skip_or_restart_from_an_unknown_step_is_an_error(settings: Settings, tmp_path: Path) -> None:
    async with running_stack(settings, tmp_path) as (_stack, client):
        await client.push(SLOW)
        run = await client.start("slow")
        await wait_for(client, run.instance_id, statuses=("running",))
        with pytest.raises(ApiError) as err:
            await client.call(
                "instance.skip_step", {"instance_id": run.instance_id, "step_id": "nostep", "reason": "x"}
            )
        assert err.value.code == "not_found" and "nostep" in err.value.message and "nap" in err.value.message
        ok = await client.call(
            "instance.skip_step", {"instance_id": run.instance_id, "step_id": "nap", "reason": "x"}
        )
        assert ok["accepted"] is True
        assert (await wait_for(client, run.instance_id))["status"] == "succeeded"
