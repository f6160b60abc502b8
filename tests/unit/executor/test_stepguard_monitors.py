"""The step guard spares podman's container monitor (``conmon``) for a bounded grace when it kills a
step's tree, so the monitor can record the end of the container whose processes were just killed (and
remove a ``--rm`` container); everything else dies at once, as before. A copy of ``/bin/sh`` named
``conmon`` stands in for the monitor: it waits for its child, then writes down that it saw it end
(tests/e2e/test_container_steps.py runs the real podman)."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from legato.executor.capture import CapturedOutput
from legato.executor.lease import FenceLease
from legato.executor.process import run_in_process_group
from legato.executor.step_runner import StepFenced
from legato.executor.stepguard import MONITOR, MONITOR_GRACE
from tests.support.processes import process_gone, read_pid


def fake_monitor(tmp_path: Path) -> Path:
    path = tmp_path / "bin" / MONITOR
    path.parent.mkdir()
    shutil.copy("/bin/sh", path)
    path.chmod(0o755)
    return path


def records_its_child(tmp_path: Path) -> str:
    """A monitor's script: start a child, wait for it to end, then write that down and exit."""
    return f"sleep 1000 & echo $! > {tmp_path / 'child'}; wait; echo recorded > {tmp_path / 'recorded'}"


def step(tmp_path: Path, monitor: str) -> list[str]:
    """The step: a monitor in the background (``monitor`` is its command line) and a worker beside it."""
    return [
        "/bin/sh",
        "-c",
        f"{monitor} & echo $! > {tmp_path / 'monitor'}; sleep 1000 & echo $! > {tmp_path / 'worker'}; wait",
    ]


async def fenced_step(tmp_path: Path, argv: list[str]) -> tuple[asyncio.Task[int], FenceLease]:
    """Start ``argv`` under a lease, let every process say its pid, then stop renewing the lease."""
    lease = FenceLease(1.0, directory=tmp_path)
    lease.renew(time.monotonic())
    task = asyncio.create_task(
        run_in_process_group(
            argv, cwd=tmp_path, env=os.environ, output=CapturedOutput(), kill_grace=30.0, lease=lease
        )
    )
    for name in ("monitor", "worker"):
        await read_pid(tmp_path / name, timeout=10.0)
    lease.renew(time.monotonic())  # the last contact: the guard fences a second later
    return task, lease


async def test_a_fenced_step_leaves_the_monitor_the_time_to_record_its_container_s_end(
    tmp_path: Path,
) -> None:
    monitor = f"{fake_monitor(tmp_path)} -c {shlex.quote(records_its_child(tmp_path))}"
    task, lease = await fenced_step(tmp_path, step(tmp_path, monitor))
    child = await read_pid(tmp_path / "child", timeout=10.0)
    with pytest.raises(StepFenced):
        await asyncio.wait_for(task, timeout=15)
    pids = {name: int((tmp_path / name).read_text()) for name in ("monitor", "worker")} | {"child": child}
    assert all(process_gone(p) for p in pids.values()), {n: p for n, p in pids.items() if not process_gone(p)}
    # The monitor outlived its child, saw it end and exited by itself.
    assert (tmp_path / "recorded").read_text() == "recorded\n"
    lease.close()


async def test_a_step_that_ends_leaves_its_monitor_the_same_time(tmp_path: Path) -> None:
    """The command ends on its own and leaves a monitor behind (``podman run`` returns as its monitor
    cleans up): the guard kills what escaped, the monitor's child included, and lets the monitor end.
    The command exits once the monitor runs its child, as ``podman run`` ends long after its monitor
    started: exiting at once could end it before the forked shell became the monitor, and the guard,
    woken by the end at once, would rightly take that shell for an ordinary escaped process."""
    monitor = f"{fake_monitor(tmp_path)} -c {shlex.quote(records_its_child(tmp_path))}"
    child = tmp_path / "child"
    started = f"while [ ! -s {child} ]; do sleep 0.01; done"
    argv = ["/bin/sh", "-c", f"{monitor} & echo $! > {tmp_path / 'monitor'}; {started}; exit 3"]
    code = await asyncio.wait_for(
        run_in_process_group(argv, cwd=tmp_path, env=os.environ, output=CapturedOutput(), kill_grace=5.0),
        timeout=15,
    )
    assert code == 3
    assert process_gone(int((tmp_path / "monitor").read_text()))
    assert process_gone(int(child.read_text()))
    assert (tmp_path / "recorded").read_text() == "recorded\n"


async def test_a_monitor_that_does_not_end_is_killed_after_the_grace(tmp_path: Path) -> None:
    """Spared only so long: a monitor that waits for something else is killed once the grace is over,
    while the step's other processes die at once."""
    fifo = tmp_path / "never-written"
    os.mkfifo(fifo)
    monitor = f"{fake_monitor(tmp_path)} -c {shlex.quote(f'read line < {fifo}')}"
    task, lease = await fenced_step(tmp_path, step(tmp_path, monitor))
    spared, worker = (int((tmp_path / name).read_text()) for name in ("monitor", "worker"))
    deadline = time.monotonic() + 10
    while not process_gone(worker):
        assert time.monotonic() < deadline, "the worker outlived the fence"
        await asyncio.sleep(0.01)
    killed_at = time.monotonic()
    assert not process_gone(spared)  # the worker is dead; the monitor is given its grace
    with pytest.raises(StepFenced):
        await asyncio.wait_for(task, timeout=MONITOR_GRACE + 10)
    assert process_gone(spared)
    assert time.monotonic() - killed_at < MONITOR_GRACE + 5
    lease.close()


def can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "--mount", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


async def test_a_process_named_like_the_monitor_in_another_mount_namespace_dies_at_once(
    tmp_path: Path,
) -> None:
    """A container's own processes run in a mount namespace of their own: whatever their executable is
    called, none is taken for the monitor."""
    if not can_unshare():
        pytest.skip("needs unshare --mount (root or CAP_SYS_ADMIN)")
    monitor = f"unshare --mount {fake_monitor(tmp_path)} -c {shlex.quote(records_its_child(tmp_path))}"
    task, lease = await fenced_step(tmp_path, step(tmp_path, monitor))
    await read_pid(tmp_path / "child", timeout=10.0)
    with pytest.raises(StepFenced):
        await asyncio.wait_for(task, timeout=15)
    assert process_gone(int((tmp_path / "monitor").read_text()))
    await asyncio.sleep(0.3)
    assert not (tmp_path / "recorded").exists()  # killed with its child: it never saw the child end
    lease.close()


async def test_a_copy_of_the_monitor_that_root_did_not_install_dies_at_once(tmp_path: Path) -> None:
    """A step run as another user than root could copy any program under the monitor's name to outlive
    a fence by the grace: a ``conmon`` that root does not own is killed with the rest, at once."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give the copy to another user")
    copy = fake_monitor(tmp_path)
    os.chown(copy, 65534, 65534)  # nobody's: a step's own file
    monitor = f"{copy} -c {shlex.quote(records_its_child(tmp_path))}"
    task, lease = await fenced_step(tmp_path, step(tmp_path, monitor))
    await read_pid(tmp_path / "child", timeout=10.0)
    started = time.monotonic()
    with pytest.raises(StepFenced):
        await asyncio.wait_for(task, timeout=15)
    assert process_gone(int((tmp_path / "monitor").read_text()))
    assert time.monotonic() - started < MONITOR_GRACE  # not spared: no grace waited for
    await asyncio.sleep(0.3)
    assert not (tmp_path / "recorded").exists()  # killed with its child: it never saw the child end
    lease.close()
