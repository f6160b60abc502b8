"""A real scheduler process with LEGATO_METRICS_PORT: its workflow actors' batches
(``legato.scheduler.batch.*``) over HTTP after real work, checked against the messages that work must
have taken, and read by the benches' parser (``bench/_batches.py``) as the benches read it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from legato.config.settings import Settings
from tests.integration.test_metrics_endpoint import free_port, samples, scrape
from tests.support.bench import load_bench_module
from tests.support.stack import running_stack, wait_for

WORKFLOW = """
id: batched
run_strategy: {type: parallel, max_concurrency: 50}
steps:
  - id: fan
    type: foreach
    foreach:
      over: "range(30)"
      concurrency: 10
      steps:
        - id: each
          type: noop
  - id: after
    type: noop
    depends_on: [fan]
"""
RUNS = 3
ITERATIONS = 30


async def test_scheduler_reports_its_actor_batches(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    scheduler_env = {
        "LEGATO_METRICS_PORT": str(port),
        "LEGATO_METRICS_HOST": "127.0.0.1",
        "OTEL_SDK_DISABLED": "false",
    }
    async with running_stack(settings, tmp_path, per_service_env={"scheduler": scheduler_env}) as (_, client):
        await client.push(WORKFLOW)
        started = await asyncio.gather(*(client.start("batched", {}) for _ in range(RUNS)))
        for res in started:
            info = await wait_for(client, res.instance_id, timeout=90)
            assert info["status"] == "succeeded", info
        text = await scrape(port)
    got = samples(text)
    batches = got["legato_scheduler_batch_messages_count"]
    messages = got["legato_scheduler_batch_messages_sum"]
    # Each run's start, each iteration's result and each run's last step's result are messages the
    # actor applied (and more: the first step's own result, timers, the workflow's push).
    assert messages >= RUNS * (1 + ITERATIONS + 1)
    assert 1 <= batches <= messages
    assert got['legato_scheduler_batch_messages_bucket{le="+Inf"}'] == batches
    for phase in ("compute", "write"):
        assert got[f'legato_scheduler_batch_duration_seconds_count{{phase="{phase}"}}'] == batches
        assert got[f'legato_scheduler_batch_duration_seconds_sum{{phase="{phase}"}}'] > 0
    # One series per phase, never one per workflow or run.
    assert not any("workflow" in key or "instance" in key for key in got if "batch" in key), sorted(got)

    parsed = load_bench_module("_batches.py").parse(text)
    assert (parsed.batches, parsed.messages) == (batches, messages)
    assert parsed.write == got['legato_scheduler_batch_duration_seconds_sum{phase="write"}']
