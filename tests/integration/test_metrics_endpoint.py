"""A real executor process with LEGATO_METRICS_PORT: scrape /metrics over HTTP after real work and check
the counters against what Postgres says happened."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg

from legato.config.settings import Settings
from legato.devstack.ports import free_port
from tests.support.stack import ServiceProcess, running_stack, wait_for

WORKFLOW = """
id: metered
run_strategy: {type: parallel, max_concurrency: 20}
steps:
  - id: first
    type: noop
  - id: flaky
    type: shell
    depends_on: [first]
    command: 'if [ "$LEGATO_ATTEMPT" = "1" ]; then exit 4; fi; echo ok'
    retry:
      error: 1
      backoff: {type: fixed, initial: 0.1s}
"""
RUNS = 4


async def scrape(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200"), head
    return body


def samples(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


async def test_executor_metrics_match_the_work_it_did(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    async with running_stack(settings, tmp_path, executors=0) as (stack, client):
        env = {**stack.env, "LEGATO_METRICS_PORT": str(port), "LEGATO_METRICS_HOST": "127.0.0.1"}
        executor = ServiceProcess(
            "metered-executor", "legato.executor", ["--queue", "default", "--concurrency", "4"], env, tmp_path
        )
        executor.start()
        try:
            await client.push(WORKFLOW)
            started = [await client.start("metered", {}) for _ in range(RUNS)]
            for res in started:
                info = await wait_for(client, res.instance_id, timeout=60)
                assert info["status"] == "succeeded", info
            conn = await asyncpg.connect(settings.database_url)
            try:
                by_status = {
                    r["status"]: r["n"]
                    for r in await conn.fetch(
                        "SELECT status, count(*) AS n FROM step_attempt GROUP BY status"
                    )
                }
            finally:
                await conn.close()
            attempts = sum(by_status.values())
            assert attempts == RUNS * 3  # noop + failed shell + retried shell
            assert by_status == {"succeeded": RUNS * 2, "failed": RUNS}

            handled = 'legato_consumer_handled_total{result="acked",stream="LEGATO_WORK"}'
            deadline = time.monotonic() + 10
            while True:  # the ack (and its count) follows the result the scheduler already applied
                got = samples(await scrape(port))
                if got.get(handled) == attempts or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert got[handled] == attempts
            assert not any(k.startswith("legato_consumer_redeliveries_total") for k in got)
            assert not any(k.startswith("legato_consumer_dead_letters_total") for k in got)
            count = "legato_step_duration_seconds_count"
            assert got[f'{count}{{outcome="succeeded",step_type="noop"}}'] == RUNS
            assert got[f'{count}{{outcome="succeeded",step_type="shell"}}'] == RUNS
            assert got[f'{count}{{outcome="failed",step_type="shell"}}'] == RUNS
            assert (
                got['legato_step_duration_seconds_bucket{outcome="failed",step_type="shell",le="+Inf"}']
                == RUNS
            )
            assert any(k.startswith("target_info{") and 'service_name="legato-executor"' in k for k in got), (
                got
            )
        finally:
            executor.terminate()
        assert executor.proc is not None and executor.proc.returncode == 0, executor.log_tail()
