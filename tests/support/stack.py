"""Legato's services as real processes for tests: start, SIGTERM, kill -9, restart."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from legato.client import ApiError, LegatoClient
from legato.runtime.settings import Settings

TERMINAL = ("succeeded", "failed", "timed_out", "stopped", "skipped")


class ServiceProcess:
    def __init__(self, name: str, module: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.module = module
        self.args = args
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.starts += 1

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        return self.proc.returncode

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


class Stack:
    """trigger + scheduler + executor(s) (+ signal-router when it exists) against the test's servers."""

    def __init__(
        self,
        settings: Settings,
        log_dir: Path,
        *,
        executors: int = 1,
        concurrency: int = 16,
        extra_env: dict[str, str] | None = None,
        lease_ttl: float = 3.0,
    ) -> None:
        self.settings = settings
        env = {
            **os.environ,
            "LEGATO_NATS_URL": settings.nats_url,
            "LEGATO_DATABASE_URL": settings.database_url,
            "LEGATO_NAMESPACE": settings.namespace,
            "LEGATO_PARTITIONS": str(settings.partitions),
            "LEGATO_LOG_FORMAT": "json",
            "LEGATO_LOG_LEVEL": "info",
            "LEGATO_GRACE_PERIOD": "5",
            "LEGATO_STATE_DIR": str(log_dir / "state"),
            **(extra_env or {}),
        }
        env.pop("LEGATO_TEST_NATS_URL", None)
        self.env = env
        self.log_dir = log_dir
        self.services: dict[str, ServiceProcess] = {
            "trigger": ServiceProcess("trigger", "legato.trigger", [], env, log_dir),
            "scheduler": ServiceProcess(
                "scheduler",
                "legato.scheduler",
                ["--replica-id", "test-scheduler", "--lease-ttl", str(lease_ttl)],
                env,
                log_dir,
            ),
        }
        for i in range(executors):
            self.services[f"executor{i}"] = ServiceProcess(
                f"executor{i}",
                "legato.executor",
                ["--queue", "default", "--concurrency", str(concurrency)],
                env,
                log_dir,
            )

    def __getitem__(self, name: str) -> ServiceProcess:
        return self.services[name]

    def start(self) -> None:
        for svc in self.services.values():
            svc.start()

    def stop(self) -> None:
        for name in ("trigger", "scheduler", *[n for n in self.services if n.startswith("executor")]):
            if name in self.services:
                self.services[name].terminate()

    def logs(self) -> str:
        return "\n".join(f"--- {n} ---\n{s.log_tail()}" for n, s in self.services.items())


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
    client = await LegatoClient.connect(settings.nats_url, namespace=settings.namespace, actor="test")
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
