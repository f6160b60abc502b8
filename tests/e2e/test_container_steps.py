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
import shlex
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from legato.client import ApiError
from legato.config.settings import Settings
from legato.executor.container_runtime import ATTEMPT_LABEL, ContainerRuntime
from legato.executor.runners import container as container_runner
from legato.executor.runners.container import sweep_stale_containers
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


def running_container_pid(instance_id: str) -> int | None:
    """The host pid of the run's container's first process once podman lists it running, else None."""
    ids = subprocess.run(
        [
            "podman",
            "ps",
            "--quiet",
            "--filter",
            "status=running",
            "--filter",
            f"label=legato.instance_id={instance_id}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not ids:
        return None
    pid = subprocess.run(
        ["podman", "inspect", "--format", "{{.State.Pid}}", ids[0]],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return int(pid) if pid.isdigit() and int(pid) > 0 else None


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def create_container(name: str, *args: str, command: tuple[str, ...] = ("sleep", "3600")) -> str:
    """``podman create`` of the test image with the tests' extra arguments; returns its id."""
    extra = shlex.split(os.environ.get("LEGATO_CONTAINER_EXTRA_ARGS", DEFAULT_EXTRA_ARGS))
    argv = ["podman", "create", "--name", name, *args, *extra, podman_image(), *command]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def container_exists(container: str) -> bool:
    return subprocess.run(["podman", "container", "exists", container], check=False).returncode == 0


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
        try:
            # Killed once the container runs. Not as soon as a process shows the mark: that is podman's
            # client too, and a client killed while it still creates the container leaves a record in
            # "Created" that no process is left to remove (the executors' sweep removes it: the test below).
            async with asyncio.timeout(60):
                while (pid := running_container_pid(started.instance_id)) is None:
                    await asyncio.sleep(0.1)
            assert alive(pid)
            executor = stack["executor0"]
            assert executor.proc is not None
            os.kill(executor.proc.pid, signal.SIGKILL)
            executor.proc.wait()
            # podman's monitor (conmon) was re-parented to the step guard, a child subreaper: the guard
            # kills the container's processes when its executor dies, and the monitor too if it has not
            # ended by itself within the guard's grace.
            async with asyncio.timeout(10):
                while alive(pid) or marked(mark):
                    await asyncio.sleep(0.1)
            # Spared by the kill, the monitor records the container's end and runs its cleanup, which
            # removes it (--rm): podman keeps no record of it.
            async with asyncio.timeout(10):
                while containers_of(started.instance_id):
                    await asyncio.sleep(0.1)
        finally:
            remove_containers_of(started.instance_id)  # only what a failed run left


NAMES = ("stale", "other", "running", "young")


async def test_the_sweep_removes_only_step_containers_left_over(tmp_path: Path) -> None:
    """An executor killed while podman's client creates a step's container leaves it "Created", with no
    monitor to remove it: the executors' sweep removes step containers that are not running and older
    than its age, and leaves running ones, younger ones and every other container alone."""
    if (why := missing_tools()) is not None:
        pytest.skip(why)
    tag = secrets.token_hex(4)
    runtime = ContainerRuntime.from_environment({"PATH": os.environ["PATH"]})

    def create(name: str, *args: str) -> str:
        return create_container(f"sweep-{tag}-{name}", *args)

    def podman(*args: str) -> None:
        subprocess.run(["podman", *args], capture_output=True, check=args[0] != "rm")

    label = f"{ATTEMPT_LABEL}=a-{tag}"
    try:
        stale = create("stale", "--label", label)
        other = create("other")  # no step's label: not Legato's
        running = create("running", "--label", label)
        podman("start", running)
        # podman compares creation times in whole seconds: the stale one is more than a second older.
        await asyncio.sleep(3.5)
        young = create("young", "--label", label)
        assert await sweep_stale_containers(runtime, older_than=2) == 1
        assert not container_exists(stale)
        assert all(container_exists(c) for c in (other, running, young))
    finally:
        podman("rm", "--force", "--ignore", "--time", "0", *(f"sweep-{tag}-{n}" for n in NAMES))


async def test_an_executor_sweeps_while_it_runs_and_stops_sweeping_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The executor's sweep task: its first sweep after ``SWEEP_FIRST``, removing a left-over step
    container; cancelled (the executor's shutdown), it ends at once."""
    if (why := missing_tools()) is not None:
        pytest.skip(why)
    monkeypatch.setattr(container_runner, "SWEEP_FIRST", 0.0)
    monkeypatch.setattr(container_runner, "STALE_CONTAINER_AGE", 1.0)
    name = f"sweep-{secrets.token_hex(4)}"
    await asyncio.to_thread(create_container, name, "--label", f"{ATTEMPT_LABEL}=a", command=("true",))
    await asyncio.sleep(2.5)  # more than a second past the age: podman compares whole seconds
    task = asyncio.create_task(
        container_runner.sweep_containers_while_running(ContainerRuntime.from_environment())
    )
    try:
        async with asyncio.timeout(30):
            while await asyncio.to_thread(container_exists, name):
                assert not task.done(), task
                await asyncio.sleep(0.1)
        assert not task.done()  # sweeping on
    finally:
        task.cancel()
        async with asyncio.timeout(2):
            await asyncio.gather(task, return_exceptions=True)
        await asyncio.to_thread(
            subprocess.run, ["podman", "rm", "--force", "--ignore", name], capture_output=True
        )
    assert task.cancelled()
