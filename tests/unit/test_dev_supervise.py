"""``legato dev`` restarts a service process that exits, after its pause."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from legato.devstack.stack import DevOptions, DevStack


def child(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code])


async def test_a_service_that_exits_is_restarted_after_its_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = DevStack(DevOptions(), tmp_path)
    dying = child("raise SystemExit(3)")
    stack.children = {"trigger": [dying]}
    spawned: list[subprocess.Popen[bytes]] = []

    def spawn(service: str, extra: list[str], index: int = 0) -> subprocess.Popen[bytes]:
        spawned.append(child("import time; time.sleep(30)"))
        return spawned[-1]

    monkeypatch.setattr(stack, "spawn", spawn)
    monkeypatch.setattr(stack, "write_state", lambda: None)
    supervisor = asyncio.create_task(stack.supervise())
    try:
        async with asyncio.timeout(10):  # the first pause is 1 s, the supervisor looks every 0.5 s
            while not spawned:
                await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # and a running child is left alone
        assert stack.children["trigger"] == spawned and len(spawned) == 1
        assert capsys.readouterr().out.count("trigger exited with 3; restarting in 1s") == 1
    finally:
        supervisor.cancel()
        await asyncio.gather(supervisor, return_exceptions=True)
        for proc in (dying, *spawned):
            proc.kill()
            proc.wait()
