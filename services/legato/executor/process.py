"""Running a step's command in its own process group, with bounded output capture and a clean kill.

Every step process is a session leader (``start_new_session``), so the step and anything it forks share
one process group. Stopping a step (timeout, cancel, shutdown) sends SIGTERM to the whole group, waits
``kill_grace`` seconds for the leader, then SIGKILLs whatever is left. When the leader exits on its own,
stragglers it left in the group (background jobs) are killed too: a step's processes never outlive it.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

from legato.executor.capture import CapturedOutput, TailBuffer
from legato.executor.step import StepFailed

READ_CHUNK = 64 * 1024
DRAIN_TIMEOUT = 1.0  # after the group is gone, pipes still held open elsewhere are not waited for


async def run_in_process_group(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    output: CapturedOutput,
    kill_grace: float,
    stdin: bytes | None = None,
) -> int:
    """Run ``argv`` to completion and return its exit code (negative: killed by that signal).

    Cancelling the caller stops the whole process group before the cancellation propagates.
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=dict(env),
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except (OSError, ValueError) as exc:
        raise StepFailed(f"cannot start {argv[0]}: {exc}") from None
    assert proc.stdout is not None and proc.stderr is not None
    readers = [
        asyncio.create_task(_pump(proc.stdout, output.stdout, output.combined)),
        asyncio.create_task(_pump(proc.stderr, output.stderr, output.combined)),
    ]
    try:
        try:
            if stdin is not None:
                await _feed(proc, stdin)
            return await proc.wait()
        except BaseException:
            await _stop_group(proc, kill_grace)
            raise
        finally:
            _killpg(proc.pid, signal.SIGKILL)
    finally:
        await _drain(readers)


async def _feed(proc: asyncio.subprocess.Process, data: bytes) -> None:
    assert proc.stdin is not None
    try:
        proc.stdin.write(data)
        await proc.stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the process exited without reading its input; its exit code tells the story
    finally:
        proc.stdin.close()


async def _pump(stream: asyncio.StreamReader, tail: TailBuffer, combined: TailBuffer) -> None:
    # Read as it comes so a chatty process never blocks on a full pipe and memory stays bounded.
    while chunk := await stream.read(READ_CHUNK):
        tail.write(chunk)
        combined.write(chunk)


async def _drain(readers: list[asyncio.Task[None]]) -> None:
    try:
        await asyncio.wait(readers, timeout=DRAIN_TIMEOUT)
    finally:
        for r in readers:
            r.cancel()
        await asyncio.gather(*readers, return_exceptions=True)


async def _stop_group(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM the group, give the leader ``grace`` seconds, then SIGKILL the group."""
    try:
        _killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=grace)
        except TimeoutError:
            pass
    finally:
        # Also on a second cancellation while waiting: the group must not survive the step.
        _killpg(proc.pid, signal.SIGKILL)
    await proc.wait()


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
