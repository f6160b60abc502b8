"""Legato's services as real processes for tests: start, SIGTERM, kill -9, restart."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from legato.client import ApiError, LegatoClient
from legato.config.settings import Settings
from legato.devstack.processes import ServiceProcess, Stack

__all__ = [
    "ServiceProcess",
    "Stack",
    "attempts_of",
    "executor_named",
    "running_stack",
    "until",
    "wait_api",
    "wait_for",
]

TERMINAL = ("succeeded", "failed", "timed_out", "stopped", "skipped")


async def wait_api(client: LegatoClient, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await client.call("workflow.list", {"limit": 1}, timeout=2.0)
            return
        except ApiError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def wait_for(
    client: LegatoClient, instance_id: str, *, statuses: tuple[str, ...] = TERMINAL, timeout: float = 60.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            last = await client.get(instance_id)
        except ApiError as exc:
            if exc.code != "not_found":
                raise
            last = {"status": "pending"}
        if last.get("status") in statuses:
            return last
        await asyncio.sleep(0.1)
    raise TimeoutError(f"run {instance_id} is {last.get('status')} after {timeout}s: {last}")


@asynccontextmanager
async def running_stack(
    settings: Settings, tmp_path: Path, **kwargs: Any
) -> AsyncIterator[tuple[Stack, LegatoClient]]:
    stack = Stack(settings, tmp_path, **kwargs)
    stack.start()
    client = await LegatoClient.connect(
        settings.nats_url, namespace=settings.namespace, actor="test", settings=settings
    )
    try:
        try:
            await wait_api(client)
        except Exception:
            raise RuntimeError("stack did not come up:\n" + stack.logs()) from None
        yield stack, client
    except BaseException:
        sys.stderr.write(stack.logs())
        raise
    finally:
        await client.close()
        await asyncio.to_thread(stack.stop)


async def attempts_of(client: LegatoClient, instance_id: str, step: str = "work") -> list[dict[str, Any]]:
    """The attempts of one step of a run, as ``instance.get`` shows them (empty before it exists)."""
    info = await client.get(instance_id)
    for s in info.get("steps", []):
        if s["step_id"] == step:
            return list(s["attempts"])
    return []


async def until(check: Any, timeout: float, what: str | Callable[[], str]) -> Any:
    """Poll the coroutine function ``check`` until it returns something truthy; fail naming ``what``
    (or what ``what()`` says then: the state the test saw). It checks once more at the deadline, so a
    test paused past it by a loaded machine still sees what arrived meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what if isinstance(what, str) else what()}")


def now(cond: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """A plain condition as the coroutine function ``until`` polls."""

    async def probe() -> bool:
        return cond()

    return probe


def executor_named(stack: Stack, executor_id: str) -> str:
    """The stack's service name of the executor process with this id (``<host>-<pid>``)."""
    for name, svc in stack.services.items():
        if name.startswith("executor") and svc.alive and executor_id.endswith(f"-{svc.pid}"):
            return name
    raise AssertionError(f"no live executor process is {executor_id}")
