"""The executor's fence: timings that beat the scheduler's death verdict, and a lease the step guard
enforces on its own, against real /bin/sh processes (a setsid'd grandchild included)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest

from legato.executor.capture import CapturedOutput
from legato.executor.heartbeat import HEARTBEAT_INTERVAL
from legato.executor.lease import FenceLease
from legato.executor.process import run_in_process_group
from legato.executor.service import ExecutorOptions
from legato.executor.step_runner import StepFenced
from legato.executor.stepguard import FENCED_EXIT, LEASE_POLL, exit_fd, wait_exit
from legato.protocol import liveness
from legato.scheduler.liveness import DEAD_AFTER, ExecutorWatch
from tests.support.processes import process_gone


def test_an_executor_fences_its_steps_strictly_before_a_scheduler_may_declare_it_dead() -> None:
    latest_kill = (
        liveness.EXECUTOR_FENCE_AFTER
        + liveness.EXECUTOR_HEARTBEAT_INTERVAL
        + liveness.STEP_GUARD_POLL
        + liveness.FENCE_KILL_TIME
    )
    assert latest_kill + liveness.FENCE_MARGIN <= liveness.EXECUTOR_DEAD_AFTER
    assert liveness.fence_slack() >= liveness.FENCE_MARGIN > 0
    # Probes are frequent enough that a healthy executor's lease never runs out between two of them.
    assert liveness.CONTACT_PROBE_INTERVAL * 4 <= liveness.EXECUTOR_FENCE_AFTER
    # The services really use these numbers.
    assert DEAD_AFTER == liveness.EXECUTOR_DEAD_AFTER
    assert ExecutorWatch.__init__.__kwdefaults__["dead_after"] == liveness.EXECUTOR_DEAD_AFTER
    assert HEARTBEAT_INTERVAL == liveness.EXECUTOR_HEARTBEAT_INTERVAL
    assert LEASE_POLL == liveness.STEP_GUARD_POLL  # the guard imports nothing from Legato
    for ack_wait in (2.0, 10.0, 30.0, 300.0):
        for grace in (0.0, 2.0, 10.0):
            options = ExecutorOptions(ack_wait=ack_wait, kill_grace=grace)
            assert 0 < options.fence_after <= liveness.EXECUTOR_FENCE_AFTER


async def _wait_file(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        await asyncio.sleep(0.02)


TREE = "setsid sleep 1000 & echo $! > {pids}; sleep 1000 & echo $! >> {pids}; echo $$ >> {pids}; wait"


async def test_a_lease_that_is_no_longer_renewed_kills_the_whole_step_tree(tmp_path: Path) -> None:
    lease = FenceLease(1.0, directory=tmp_path)
    lease.renew(time.monotonic())
    pids = tmp_path / "pids"
    task = asyncio.create_task(
        run_in_process_group(
            ["/bin/sh", "-c", TREE.format(pids=pids)],
            cwd=tmp_path,
            env=os.environ,
            output=CapturedOutput(),
            kill_grace=30.0,
            lease=lease,
        )
    )
    await _wait_file(pids)
    await asyncio.sleep(0.1)
    tree = [int(p) for p in pids.read_text().split()]
    assert len(tree) == 3 and not any(process_gone(p) for p in tree)
    # Renewed for a while: the step keeps running past its first deadline.
    for _ in range(6):
        lease.renew(time.monotonic())
        await asyncio.sleep(0.25)
    assert not task.done() and not any(process_gone(p) for p in tree)
    # No more renewals (a frozen or cut-off executor): the guard fences on its own.
    last_contact = time.monotonic()
    lease.renew(last_contact)
    with pytest.raises(StepFenced) as fenced:
        await asyncio.wait_for(task, timeout=15)
    ended = time.monotonic()
    assert "executor lost contact with NATS for 1." in fenced.value.why, fenced.value.why
    assert all(process_gone(p) for p in tree), [p for p in tree if not process_gone(p)]
    # Within the lease, a poll and the kill (generous: a loaded machine).
    assert 1.0 <= ended - last_contact < 1.0 + LEASE_POLL + 2.0, ended - last_contact
    assert not list(tmp_path.glob("legato-executor-*/fenced.*"))  # the mark was consumed
    lease.close()
    assert not lease.dir.exists()


async def test_an_expired_lease_never_starts_the_step(tmp_path: Path) -> None:
    lease = FenceLease(1.0, directory=tmp_path)
    lease.renew(time.monotonic() - 5.0)
    ran = tmp_path / "ran"
    with pytest.raises(StepFenced, match="lost contact with NATS for 5"):
        await run_in_process_group(
            ["/bin/sh", "-c", f"touch {ran}"],
            cwd=tmp_path,
            env=os.environ,
            output=CapturedOutput(),
            kill_grace=1.0,
            lease=lease,
        )
    await asyncio.sleep(0.2)
    assert not ran.exists()


async def test_an_unreadable_lease_fences_the_step(tmp_path: Path) -> None:
    lease = FenceLease(30.0, directory=tmp_path)
    lease.renew(time.monotonic())
    started = tmp_path / "started"
    task = asyncio.create_task(
        run_in_process_group(
            ["/bin/sh", "-c", f"touch {started}; sleep 1000"],
            cwd=tmp_path,
            env=os.environ,
            output=CapturedOutput(),
            kill_grace=1.0,
            lease=lease,
        )
    )
    await _wait_file(started)
    lease.path.write_text("garbage\n")
    with pytest.raises(StepFenced, match="no readable lease"):
        await asyncio.wait_for(task, timeout=10)


async def test_a_step_exiting_with_the_guards_status_is_not_taken_for_fenced(tmp_path: Path) -> None:
    lease = FenceLease(30.0, directory=tmp_path)
    lease.renew(time.monotonic())
    code = await run_in_process_group(
        ["/bin/sh", "-c", f"exit {FENCED_EXIT}"],
        cwd=tmp_path,
        env=os.environ,
        output=CapturedOutput(),
        kill_grace=1.0,
        lease=lease,
    )
    assert code == FENCED_EXIT


def test_the_guard_wakes_when_its_command_ends_not_at_its_next_lease_read() -> None:
    """Between two lease reads the guard waits on the command's pidfd: a step that ends is noticed at
    once (it was noticed at the next read, up to ``LEASE_POLL`` later: 200 ms added to every short
    step)."""
    command = subprocess.Popen(["sleep", "0.05"])
    ended = exit_fd(command.pid)
    assert ended is not None  # Linux 5.3 or later
    try:
        began = time.monotonic()
        wait_exit(ended, 60.0)  # the wait a lease read would allow, were it this long
        assert time.monotonic() - began < 30.0
        assert command.wait(timeout=5) == 0
    finally:
        os.close(ended)
