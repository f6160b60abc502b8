"""``container`` steps on the real stack with a real runtime (podman): a command's values stay single
arguments, env (a secret too) reaches the container and never `legato show`, outputs and artifacts come
back through the mounted folder, an image that does not exist fails each attempt with the runtime's
error and is retried, a timeout stops and removes the container, and the executor stays up.

Marked ``container``: it needs podman (``apt-get install -y podman busybox-static``); the image is
built here from busybox-static (no registry is needed). Where podman is missing it is skipped.
``LEGATO_CONTAINER_EXTRA_ARGS`` (default: lower nofile/nproc rlimits, which a runtime in a VM or an
unprivileged container may not raise) is passed to the executor.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from legato.client import ApiError
from legato.config.settings import Settings
from tests.e2e.test_secrets import cli
from tests.support.container_image import DEFAULT_EXTRA_ARGS, missing_tools, podman_image
from tests.support.stack import running_stack, wait_for

pytestmark = [pytest.mark.container, pytest.mark.xdist_group("podman")]

WORKFLOW = """
id: boxed
params:
  who: {type: string, default: world}
  token: {type: secret, default: box_token}
steps:
  - id: greet
    type: container
    image: IMAGE
    command: ["/bin/sh", "-c", 'echo "hello $1 and $GREETING"; echo "token $TOKEN" >&2; mkdir -p out;
      printf "%s" "$1" > out/who.txt; echo "who=$1" >> "$LEGATO_OUTPUTS"', "sh", "${params.who}"]
    env: {GREETING: "hi ${params.who}", TOKEN: "${params.token}"}
    mounts: [{source: DATA, target: /data}]
    workdir: /legato/work
    artifacts: ["out/*.txt"]
    outputs: [who]
  - id: read
    type: container
    depends_on: [greet]
    image: IMAGE
    command: ["/bin/cat", "/data/input.txt"]
    mounts: [{source: DATA, target: /data}]
"""

MISSING = """
id: no-image
steps:
  - id: pull
    type: container
    image: localhost/legato-no-such-image:0
    pull: never
    retry: {error: 1, backoff: {type: fixed, initial: 1s}}
"""

SLOW = """
id: boxed-slow
steps:
  - id: wait
    type: container
    image: IMAGE
    command: ["/bin/sleep", "600"]
    timeout: 5s
    retry: {timeout: 0}
"""


def containers_of(instance_id: str) -> list[str]:
    """Every container podman has a record of for the run, running or not."""
    done = subprocess.run(
        ["podman", "ps", "--all", "--quiet", "--filter", f"label=legato.instance_id={instance_id}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()


def remove_containers_of(instance_id: str) -> None:
    for container in containers_of(instance_id):
        subprocess.run(["podman", "rm", "--force", container], capture_output=True, check=False)


async def test_container_steps_run_fail_and_stop_for_real(settings: Settings, tmp_path: Path) -> None:
    if (why := missing_tools()) is not None:
        pytest.skip(why)
    image = podman_image()
    data = tmp_path / "data"
    data.mkdir()
    (data / "input.txt").write_text("from the host\n")
    token = "tok-" + secrets.token_hex(12)
    who = "a b; $(touch /tmp/pwned) `id` 'q'"
    env = {
        "LEGATO_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
        "LEGATO_CONTAINER_RUNTIME": "podman",
        "LEGATO_CONTAINER_EXTRA_ARGS": os.environ.get("LEGATO_CONTAINER_EXTRA_ARGS", DEFAULT_EXTRA_ARGS),
        "LEGATO_CONTAINER_MOUNT_ROOTS": str(tmp_path),
        "LEGATO_SECRET_BOX_TOKEN": token,
    }
    async with running_stack(settings, tmp_path / "stack", extra_env=env) as (_stack, client):
        await client.push(WORKFLOW.replace("IMAGE", image).replace("DATA", str(data)))
        await client.push(MISSING)
        await client.push(SLOW.replace("IMAGE", image))
        with pytest.raises(ApiError) as refused:
            await client.push(
                SLOW.replace("IMAGE", "--privileged").replace("id: boxed-slow", "id: boxed-bad")
            )
        good = await wait_for(client, (await client.start("boxed", {"who": who})).instance_id, timeout=120)
        good_shown = cli(settings, "show", good["instance_id"])
        good_logs = cli(settings, "logs", good["instance_id"], "greet")
        missing = await wait_for(client, (await client.start("no-image", {})).instance_id, timeout=120)
        missing_shown = cli(settings, "show", missing["instance_id"])
        slow = await wait_for(client, (await client.start("boxed-slow", {})).instance_id, timeout=120)
        # The executor is still up: the same workflow runs again after the failures.
        again = await wait_for(client, (await client.start("boxed", {"who": "x"})).instance_id, timeout=120)

    steps = {s["step_id"]: s for s in good["steps"]}
    greet = steps["greet"]
    assert greet["status"] == "succeeded", greet["attempts"][0]["error"]
    assert greet["outputs"]["who"] == who  # one argument, whatever it holds: no shell saw it
    [kept] = greet["outputs"]["artifacts"]
    assert kept["path"] == "out/who.txt"
    assert Path(kept["uri"].removeprefix("file://")).read_text() == who
    attempt = greet["attempts"][0]
    assert f"hello {who} and hi {who}" in attempt["log_tail"], attempt
    assert "token ***" in attempt["log_tail"], attempt
    assert steps["read"]["status"] == "succeeded"
    assert "from the host" in steps["read"]["attempts"][0]["log_tail"]
    assert "out/who.txt" in good_shown, good_shown
    for text in (good_shown, good_logs, repr(good)):
        assert token not in text
    assert not Path("/tmp/pwned").exists()

    assert refused.value.code == "invalid_definition"
    assert refused.value.details["errors"] == [
        {
            "path": "steps[0].image",
            "message": "must match an image reference (name[:tag]), got '--privileged'",
        }
    ]

    [step] = missing["steps"]
    assert step["status"] == "failed"
    assert [a["status"] for a in step["attempts"]] == ["failed", "failed"]  # retried once
    for attempt in step["attempts"]:
        assert "image not known" in attempt["error"], attempt
        assert attempt["error"].startswith("the container runtime failed (exit code 125"), attempt
    assert "localhost/legato-no-such-image:0: image not known" in missing_shown, missing_shown

    attempt = slow["steps"][0]["attempts"][0]
    assert (attempt["failure_kind"], attempt["error"]) == ("timeout", "timed out after 5s"), attempt
    assert containers_of(slow["instance_id"]) == []  # stopped and removed
    assert containers_of(good["instance_id"]) == []  # --rm
    assert again["status"] == "succeeded", again


KILLED = """
id: boxed-killed
steps:
  - id: wait
    type: container
    image: IMAGE
    command: ["/bin/sh", "-c", "sleep 3600", "MARK"]
"""


def marked(mark: str) -> list[int]:
    return [p.pid for p in psutil.process_iter(["cmdline"]) if mark in " ".join(p.info["cmdline"] or [])]


async def test_an_executor_killed_mid_step_takes_its_container_along(
    settings: Settings, tmp_path: Path
) -> None:
    if (why := missing_tools()) is not None:
        pytest.skip(why)
    image = podman_image()
    mark = "mark-" + secrets.token_hex(8)
    env = {"LEGATO_CONTAINER_EXTRA_ARGS": os.environ.get("LEGATO_CONTAINER_EXTRA_ARGS", DEFAULT_EXTRA_ARGS)}
    async with running_stack(settings, tmp_path / "stack", extra_env=env) as (stack, client):
        await client.push(KILLED.replace("IMAGE", image).replace("MARK", mark))
        started = await client.start("boxed-killed", {})
        async with asyncio.timeout(60):
            while not marked(mark):
                await asyncio.sleep(0.1)
        executor = stack["executor0"]
        assert executor.proc is not None
        os.kill(executor.proc.pid, signal.SIGKILL)
        executor.proc.wait()
        # podman's monitor (conmon) was re-parented to the step guard, a child subreaper: the guard
        # kills the container's processes when its executor dies, and the monitor too if it has not
        # ended by itself within the guard's grace.
        async with asyncio.timeout(10):
            while survivors := marked(mark):
                await asyncio.sleep(0.1)
        assert not survivors
        # What podman's record says is not asserted. The monitor, spared by the kill, usually records
        # the container's end and removes it (--rm) within 0.1 s, but on a loaded machine its cleanup
        # was sometimes cut short and the container stayed listed as running for good (1 of 3 CI runs;
        # 1 or 2 of 5 runs here with three busy loops on 2 cores, with a grace of 2 s or of 10 s alike).
        # The record is removed here: no executor is left to remove it.
        remove_containers_of(started.instance_id)
        assert containers_of(started.instance_id) == []
