"""Whether a process the test started has exited, from psutil (a zombie waiting for its parent counts
as exited: it runs no code and holds nothing but its pid)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psutil


def process_gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


async def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    """True once ``pid`` is gone, False if it is still there after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process_gone(pid):
            return True
        await asyncio.sleep(0.05)
    return process_gone(pid)


def _pid_in(path: Path) -> int | None:
    """The pid a step wrote to ``path``, or None while it has not (yet)."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text else None


async def read_pid(path: Path, timeout: float = 5.0) -> int:
    """Wait (at most ``timeout`` seconds) until a pid is written to ``path``, and return it."""
    async with asyncio.timeout(timeout):
        while (pid := _pid_in(path)) is None:
            await asyncio.sleep(0.02)
    return pid
