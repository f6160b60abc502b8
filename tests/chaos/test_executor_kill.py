"""Executor ``kill -9`` during a step longer than the ack wait, in a ``sequential`` workflow: the step's
whole process tree dies with its executor, so the retry of the lost attempt never overlaps it and no
step process is left behind. Checked on what the step itself did (lines it appended to its own log)
and on the machine's process table (psutil)."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
import uuid
from pathlib import Path

import psutil
import pytest

from legato.client import LegatoClient
from legato.config.settings import Settings
from tests.support.stack import Stack, wait_api, wait_for

pytestmark = pytest.mark.slow

# Ticks every 0.1 s for ~6 s (three ack waits), from the shell, from a child and from a grandchild that
# left the process group with setsid: all three must die with the executor.
TICK = """i=0
while [ $i -lt 60 ]; do
  echo "$LEGATO_INSTANCE_ID $LEGATO_ATTEMPT $1 $(date +%s.%N)" >> "$2"
  i=$((i+1))
  sleep 0.1
done
"""

WORKFLOW = """
id: {wf}
run_strategy: sequential
steps:
  - id: body
    type: shell
    command: >-
      export LEGATO_TEST_MARK={mark};
      sh {tick} child {log} & setsid sh {tick} escaped {log} &
      sh {tick} shell {log}; wait;
      echo "$LEGATO_INSTANCE_ID $LEGATO_ATTEMPT done $(date +%s.%N)" >> {log}
    retry: {{platform: 5, backoff: {{type: fixed, initial: 0.2s}}}}
"""


def marked_processes(mark: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("LEGATO_TEST_MARK") == mark and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def read_log(path: Path) -> list[tuple[str, int, str, float]]:
    out = []
    for line in path.read_text().splitlines():
        run, attempt, who, at = line.split()
        out.append((run, int(attempt), who, float(at)))
    return out


async def test_executor_kill9_takes_the_step_tree_along_and_the_retry_never_overlaps(
    settings: Settings, tmp_path: Path
) -> None:
    wf = f"killseq-{uuid.uuid4().hex[:8]}"
    mark = uuid.uuid4().hex
    log = tmp_path / "steps.log"
    tick = tmp_path / "tick.sh"
    tick.write_text(TICK)
    stack = Stack(settings, tmp_path / "stack", concurrency=4)
    stack["executor0"].args += ["--ack-wait", "2"]
    stack.start()
    client = await LegatoClient.connect(settings.nats_url, namespace=settings.namespace, actor="test")
    try:
        await wait_api(client)
        await client.push(WORKFLOW.format(wf=wf, mark=mark, log=log, tick=tick))
        first = await client.start(wf, request_id="first")
        second = await client.start(wf, request_id="second")
        async with asyncio.timeout(60):
            while not (log.exists() and len({w for _, _, w, _ in read_log(log)}) == 3):
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert len(marked_processes(mark)) >= 3
        executor = stack["executor0"]
        assert executor.proc is not None
        # Only the executor process: its step processes live in sessions of their own.
        os.kill(executor.proc.pid, signal.SIGKILL)
        executor.proc.wait()
        killed_at = time.time()
        async with asyncio.timeout(5):
            while survivors := marked_processes(mark):
                await asyncio.sleep(0.05)
        assert not survivors
        await asyncio.sleep(1.0)  # anything still ticking would show in the log by now
        executor.start()
        infos = [await wait_for(client, r.instance_id, timeout=120) for r in (first, second)]
    except BaseException:
        print(stack.logs())
        raise
    finally:
        await client.close()
        await asyncio.to_thread(stack.stop)
    assert [i["status"] for i in infos] == ["succeeded", "succeeded"], infos
    assert not marked_processes(mark)

    lines = read_log(log)
    first_id = first.instance_id
    lost = [x for x in lines if x[0] == first_id and x[1] == 1]
    # The first attempt was cut off: it never finished, and nothing of it ran after the kill.
    assert lost and not any(who == "done" for _, _, who, _ in lost)
    assert max(at for *_, at in lost) < killed_at + 1.0
    # Each run's body completed exactly once, and no two bodies ever ran at the same time.
    done = [(run, attempt) for run, attempt, who, _ in lines if who == "done"]
    assert sorted(done) == sorted([(first_id, 2), (second.instance_id, 1)]), done
    spans: dict[tuple[str, int], tuple[float, float]] = {}
    for run, attempt, _, at in lines:
        lo, hi = spans.get((run, attempt), (at, at))
        spans[(run, attempt)] = (min(lo, at), max(hi, at))
    ordered = sorted(spans.items(), key=lambda kv: kv[1][0])
    for (key_a, (_, end_a)), (key_b, (start_b, _)) in itertools.pairwise(ordered):
        assert end_a < start_b, f"{key_a} still ran at {end_a} after {key_b} started at {start_b}"
    infos_by_id = {i["instance_id"]: i for i in infos}
    attempts = infos_by_id[first_id]["steps"][0]["attempts"]
    assert [a["status"] for a in attempts] == ["lost", "succeeded"], attempts
