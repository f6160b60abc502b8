"""A live but silent executor fences its own steps before the scheduler can retry them elsewhere.

Real processes over real NATS and Postgres, two executors. The executor running a long step of a
``sequential`` workflow (``retry: {platform: 2}``) goes silent while alive:

- frozen with SIGSTOP (its step's guard is another process and is not frozen);
- cut off from NATS: it connects through a TCP proxy in this test that stops forwarding, while the
  scheduler and the other executor connect directly.

After 5 s the scheduler reports the attempt lost and the retry runs on the other executor. What the
step itself wrote (``start``/``tick`` every 0.2 s/``end`` lines, with its own clock) must show the first
attempt's last line strictly before the retry's first: no overlap. Once the silent executor is back,
its late "fenced" report changes nothing, nothing runs twice and the run succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from legato.client import LegatoClient
from legato.config.settings import Settings
from tests.support.stack import attempts_of, executor_named, running_stack, until, wait_for

pytestmark = pytest.mark.slow

WORKFLOW = """
id: fenced
run_strategy: sequential
steps:
  - id: work
    type: shell
    command: 'sh {script}'
    retry: {{platform: 2}}
"""

# The first attempt ticks for a minute; a retry ticks five times and ends.
STEP = """
log={log}
echo "start $LEGATO_ATTEMPT $(date +%s.%N) $$" >> "$log"
n=5
if [ "$LEGATO_ATTEMPT" = 1 ]; then n=300; fi
i=0
while [ "$i" -lt "$n" ]; do
  echo "tick $LEGATO_ATTEMPT $(date +%s.%N)" >> "$log"
  sleep 0.2
  i=$((i + 1))
done
echo "end $LEGATO_ATTEMPT $(date +%s.%N)" >> "$log"
"""


def read_log(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines() if len(line.split()) >= 3]


async def first_attempt_running(client: LegatoClient, run: str) -> dict[str, Any]:
    async def running() -> dict[str, Any] | None:
        atts = await attempts_of(client, run)
        return atts[0] if atts and atts[0]["status"] == "running" and atts[0]["executor"] else None

    attempt: dict[str, Any] = await until(running, 60, "the first attempt is running on an executor")
    return attempt


async def settle_and_check(client: LegatoClient, run: str, log: Path, silenced_at: float) -> dict[str, Any]:
    """Lost, retried, succeeded: the retry's first line after the first attempt's last line."""

    async def lost() -> dict[str, Any] | None:
        atts = await attempts_of(client, run)
        return atts[0] if atts and atts[0]["status"] == "lost" else None

    first = await until(lost, 60, "the silent executor's attempt is reported lost")
    assert "lost: no heartbeat for" in first["error"], first
    info = await wait_for(client, run, timeout=90)
    assert info["status"] == "succeeded", info
    lines = read_log(log)
    one = [float(f[2]) for f in lines if f[1] == "1"]
    two = [float(f[2]) for f in lines if f[1] == "2"]
    assert one and two, lines
    print(
        f"first attempt's last line {one[-1] - silenced_at:.2f}s after the executor went silent; "
        f"retry's first line {two[0] - silenced_at:.2f}s after; gap {two[0] - one[-1]:.2f}s"
    )
    assert one[-1] < two[0], f"overlap: attempt 1 wrote at {one[-1]:.3f}, attempt 2 started at {two[0]:.3f}"
    return first


async def check_after_return(client: LegatoClient, run: str, log: Path, first: dict[str, Any]) -> None:
    """The silent executor is back: its late report is ignored and nothing runs again."""
    before = read_log(log)
    await asyncio.sleep(8.0)  # time to resume, report its attempt as fenced and heartbeat again
    lines = read_log(log)
    assert lines == before, lines[len(before) :]
    starts = [f[1] for f in lines if f[0] == "start"]
    assert starts == ["1", "2"], lines
    assert [f[1] for f in lines if f[0] == "end"] == ["2"], lines
    info = await client.get(run)
    assert info["status"] == "succeeded", info
    atts = next(s for s in info["steps"] if s["step_id"] == "work")["attempts"]
    assert len(atts) == 2, atts
    assert atts[0]["status"] == "lost" and atts[0]["error"] == first["error"], atts[0]
    assert atts[1]["status"] == "succeeded", atts[1]


async def test_a_frozen_executor_stops_its_step_before_the_retry_starts(
    settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "steps.log"
    script = tmp_path / "step.sh"
    script.write_text(STEP.format(log=log))
    stopped: int | None = None
    try:
        async with running_stack(settings, tmp_path, executors=2) as (stack, client):
            await client.push(WORKFLOW.format(script=script))
            run = (await client.start("fenced")).instance_id
            attempt = await first_attempt_running(client, run)
            victim = stack[executor_named(stack, attempt["executor"])]
            await asyncio.sleep(1.0)  # a few ticks
            assert victim.pid is not None
            stopped = victim.pid
            os.kill(stopped, signal.SIGSTOP)
            frozen_at = time.time()
            first = await settle_and_check(client, run, log, frozen_at)
            os.kill(stopped, signal.SIGCONT)
            stopped = None
            await check_after_return(client, run, log, first)
            assert victim.alive
    finally:
        if stopped is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGCONT)
    assert "attempt_fenced" in victim.log_tail(200_000), victim.log_tail()


class PausableProxy:
    """A TCP proxy to NATS that can stop forwarding (a network partition) without closing anything."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self.writers += [writer, up_writer]
        for a, b in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(a, b))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                await self.flowing.wait()
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for w in self.writers:
            with contextlib.suppress(OSError):
                w.close()


async def test_an_executor_cut_off_from_nats_stops_its_step_before_the_retry_starts(
    settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "steps.log"
    script = tmp_path / "step.sh"
    script.write_text(STEP.format(log=log))
    url = urlsplit(settings.nats_url)
    proxy = PausableProxy(url.hostname or "127.0.0.1", url.port or 4222)
    port = await proxy.start()
    try:
        async with running_stack(settings, tmp_path, executors=2) as (stack, client):
            # executor0 alone, through the proxy: it gets the first attempt.
            stack["executor1"].terminate()
            cut = stack["executor0"]
            cut.terminate()
            cut.env = {**cut.env, "LEGATO_NATS_URL": f"nats://127.0.0.1:{port}"}
            cut.start()
            await client.push(WORKFLOW.format(script=script))
            run = (await client.start("fenced")).instance_id
            attempt = await first_attempt_running(client, run)
            assert executor_named(stack, attempt["executor"]) == "executor0"
            assert proxy.writers, "executor0 does not go through the proxy"
            stack["executor1"].start()  # the other executor, connected directly, for the retry
            await asyncio.sleep(3.0)
            proxy.flowing.clear()
            cut_at = time.time()
            first = await settle_and_check(client, run, log, cut_at)
            proxy.flowing.set()
            await check_after_return(client, run, log, first)
            assert cut.alive
    finally:
        proxy.flowing.set()
        await proxy.close()
    assert "attempt_fenced" in cut.log_tail(200_000), cut.log_tail()
