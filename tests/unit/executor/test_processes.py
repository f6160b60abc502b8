"""Step processes against real /bin/sh and Python: bounded capture, process-group kill, the worker."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from legato.executor.capture import CapturedOutput
from legato.executor.process import run_in_process_group
from legato.runtime.entry import loop_factory
from tests.support.processes import process_gone

T = TypeVar("T")
# Each service's loop is LEGATO_EVENT_LOOP's; the runner must behave the same on both.
EVENT_LOOPS = [
    "asyncio",
    pytest.param(
        "uvloop", marks=pytest.mark.skipif(loop_factory("uvloop") is None, reason="uvloop is not installed")
    ),
]


def run_on(loop_name: str, main: Callable[[], Awaitable[T]]) -> T:
    """``main()`` run to completion on a fresh loop of that kind (pytest-asyncio's is the standard one)."""

    async def wrapped() -> T:
        return await main()

    with asyncio.Runner(loop_factory=loop_factory(loop_name)) as runner:
        return runner.run(wrapped())


@pytest.mark.parametrize("loop_name", EVENT_LOOPS)
def test_chatty_command_keeps_only_the_tails(tmp_path: Path, loop_name: str) -> None:
    out = CapturedOutput()
    code = run_on(
        loop_name,
        lambda: run_in_process_group(
            ["/bin/sh", "-c", "head -c 5000000 /dev/zero | tr '\\0' a; echo; echo END; echo ERR >&2"],
            cwd=tmp_path,
            env=os.environ,
            output=out,
            kill_grace=1.0,
        ),
    )
    assert code == 0
    assert out.stdout.total == 5_000_005
    assert len(out.stdout.text()) == 64 * 1024 and out.stdout.text().endswith("a\nEND\n")
    assert out.stderr.text() == "ERR\n"
    assert len(out.log_tail() or "") == 8 * 1024


async def test_background_children_do_not_outlive_a_finished_step(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    code = await run_in_process_group(
        ["/bin/sh", "-c", f"sleep 1000 & echo $! > {pidfile}"],
        cwd=tmp_path,
        env=os.environ,
        output=CapturedOutput(),
        kill_grace=1.0,
    )
    assert code == 0
    pid = int(pidfile.read_text())
    await asyncio.sleep(0.2)
    assert process_gone(pid)


async def test_sigterm_is_escalated_to_sigkill_after_the_grace(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    task = asyncio.create_task(
        run_in_process_group(
            ["/bin/sh", "-c", f"trap '' TERM; touch {ready}; while true; do sleep 0.05; done"],
            cwd=tmp_path,
            env=os.environ,
            output=CapturedOutput(),
            kill_grace=0.3,
        )
    )
    while not ready.exists():
        await asyncio.sleep(0.02)
    loop = asyncio.get_running_loop()
    started = loop.time()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert 0.3 <= loop.time() - started < 3.0


def test_python_worker_reports_through_its_result_file_not_stdout(tmp_path: Path) -> None:
    (tmp_path / "mod_for_python_worker.py").write_text(
        "def f(params):\n    print('printed')\n    return {'sum': params['a'] + params['b']}\n"
    )
    result = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, "-m", "legato.executor.python_worker", str(result)],
        input=json.dumps({"function": "mod_for_python_worker:f", "params": {"a": 1, "b": 2}}).encode(),
        capture_output=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"printed\n"
    assert json.loads(result.read_text()) == {"ok": True, "outputs": {"sum": 3}}


def _call_worker(tmp_path: Path, module: str, function: str) -> dict[str, object]:
    (tmp_path / "mod_for_lazy_worker.py").write_text(module)
    result = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, "-m", "legato.executor.python_worker", str(result)],
        input=json.dumps({"function": f"mod_for_lazy_worker:{function}", "params": {}}).encode(),
        capture_output=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, object] = json.loads(result.read_text())
    return report


def test_python_worker_loads_asyncio_only_for_a_coroutine(tmp_path: Path) -> None:
    """asyncio, inspect and traceback are ~40 ms of a worker's start: a plain function runs without
    them, and an ``async def`` (whose module never imported asyncio) is still awaited."""
    module = (
        "import sys\n"
        "HEAVY = ('asyncio', 'inspect', 'traceback')\n"
        "def plain(params):\n"
        "    return {'loaded': [m for m in HEAVY if m in sys.modules]}\n"
        "async def coro(params):\n"
        "    return {'awaited': True}\n"
    )
    assert _call_worker(tmp_path, module, "plain") == {"ok": True, "outputs": {"loaded": []}}
    assert _call_worker(tmp_path, module, "coro") == {"ok": True, "outputs": {"awaited": True}}


@pytest.mark.parametrize("loop_name", EVENT_LOOPS)
def test_input_a_process_never_reads_does_not_block_it(tmp_path: Path, loop_name: str) -> None:
    async def step() -> int:
        return await asyncio.wait_for(
            run_in_process_group(
                ["/bin/sh", "-c", "exit 5"],
                cwd=tmp_path,
                env=os.environ,
                output=CapturedOutput(),
                kill_grace=1.0,
                stdin=b"x" * 5_000_000,
            ),
            timeout=10,
        )

    code = run_on(loop_name, step)
    assert code == 5


@pytest.mark.parametrize("loop_name", EVENT_LOOPS)
def test_input_reaches_the_process_on_either_loop(tmp_path: Path, loop_name: str) -> None:
    # How python and notebook steps get their call: bigger than a pipe's buffer, so it is written in parts.
    given = os.urandom(1_000_000)
    out = CapturedOutput()
    code = run_on(
        loop_name,
        lambda: run_in_process_group(
            [
                sys.executable,
                "-c",
                "import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())",
            ],
            cwd=tmp_path,
            env=os.environ,
            output=out,
            kill_grace=1.0,
            stdin=given,
        ),
    )
    assert (code, out.stderr.text()) == (0, "")
    assert out.stdout.text() == hashlib.sha256(given).hexdigest() + "\n"
