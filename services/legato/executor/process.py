"""Running a step's command in its own process group, with bounded output capture and a clean kill.

Every step starts under its guard (``stepguard.py``), a session leader (``start_new_session``), so the
step and anything it forks share one process group, and the guard kills that whole tree the moment the
executor dies, ``kill -9`` included (a parent-death signal plus a child subreaper): a step never runs on
without its executor, so a retry of an attempt lost with its executor never overlaps it. Nor does it run
on for long beside a frozen or cut-off executor: the guard also enforces the executor's fence lease
(``lease.py``) and SIGKILLs the tree once it expires. Stopping a step (timeout, cancel, shutdown) sends
SIGTERM to the whole group, waits
``kill_grace`` seconds for the leader, then SIGKILLs whatever is left. When the leader exits on its own,
stragglers it left in the group (background jobs) are killed too: a step's processes never outlive it.

The exit is taken from the protocol's ``process_exited``, not ``Process.wait()``: on Python 3.11 the
latter also waits for every pipe to close, which a backgrounded grandchild can hold open forever.
Output arrives through ``pipe_data_received`` straight into tail buffers, so memory stays bounded
however much a step prints.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

from legato.executor.capture import CapturedOutput
from legato.executor.lease import FenceLease
from legato.executor.step_runner import StepFailed, StepFenced

PIPES_CLOSE_TIMEOUT = 1.0  # after the group is gone, pipes still held open elsewhere are not waited for
REAP_TIMEOUT = 5.0  # after SIGKILL, the exit is normally seen within milliseconds
STEP_GUARD = Path(__file__).with_name("stepguard.py")


def guarded(argv: Sequence[str], lease: FenceLease | None = None) -> list[str]:
    """``argv`` run under the step guard, bound to this (the executor) process's life and lease."""
    # -I -S: no user site, no PYTHON* variables from the step's environment, fast start.
    fenced = ["--lease", str(lease.path)] if lease is not None else []
    return [sys.executable, "-I", "-S", str(STEP_GUARD), str(os.getpid()), *fenced, "--", *argv]


class _CapturingProtocol(asyncio.SubprocessProtocol):
    def __init__(self, output: CapturedOutput) -> None:
        loop = asyncio.get_running_loop()
        self.output = output
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        chunk = data.encode() if isinstance(data, str) else data
        (self.output.stdout if fd == 1 else self.output.stderr).write(chunk)
        self.output.combined.write(chunk)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def run_in_process_group(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    output: CapturedOutput,
    kill_grace: float,
    stdin: bytes | None = None,
    lease: FenceLease | None = None,
) -> int:
    """Run ``argv`` to completion and return its exit code (negative: killed by that signal).

    Cancelling the caller stops the whole process group before the cancellation propagates. With a
    ``lease``, the guard kills the step once the lease expires: ``StepFenced`` is raised then.
    """
    loop = asyncio.get_running_loop()
    try:
        transport, protocol = await loop.subprocess_exec(
            lambda: _CapturingProtocol(output),
            *guarded(argv, lease),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except (OSError, ValueError) as exc:
        raise StepFailed(f"cannot start {argv[0]}: {exc}") from None
    pid = transport.get_pid()
    try:
        try:
            if stdin is not None:
                # A cast, not isinstance: uvloop's pipe transports implement WriteTransport without
                # subclassing it, so an isinstance check fails every step given input there.
                pipe = cast(asyncio.WriteTransport, transport.get_pipe_transport(0))
                # Buffered by the transport; a process that exits without reading just loses it.
                pipe.write(stdin)
                pipe.close()
            # asyncio.wait, not await: cancelling this task must not cancel the exit future.
            await asyncio.wait({protocol.exited})
        except BaseException:
            await _stop_group(pid, protocol, kill_grace)
            raise
        finally:
            _killpg(pid, signal.SIGKILL)
        code = transport.get_returncode()
        assert code is not None
        fenced = lease.fenced_mark(pid) if lease is not None else None
        if fenced is not None:
            raise StepFenced(fenced)
        # The group is gone, so the pipes close; a process that escaped it is not waited for.
        await asyncio.wait({protocol.closed}, timeout=PIPES_CLOSE_TIMEOUT)
        return code
    finally:
        transport.close()


async def _stop_group(pid: int, protocol: _CapturingProtocol, grace: float) -> None:
    """SIGTERM the group, give the leader ``grace`` seconds, then SIGKILL the group."""
    try:
        _killpg(pid, signal.SIGTERM)
        await asyncio.wait({protocol.exited}, timeout=grace)
    finally:
        # Also on a second cancellation while waiting: the group must not survive the step.
        _killpg(pid, signal.SIGKILL)
    await asyncio.wait({protocol.exited}, timeout=REAP_TIMEOUT)


def _killpg(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already gone


def describe_exit(code: int, stderr_tail: str = "") -> str:
    """``exit code 3: <stderr tail>``, or ``killed by signal SIGSEGV`` for a negative code."""
    if code < 0:
        try:
            what = f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            what = f"killed by signal {-code}"
    else:
        what = f"exit code {code}"
    return f"{what}: {stderr_tail}" if stderr_tail else what
