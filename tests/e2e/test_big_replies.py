"""Replies stay within the server's max payload and lists page: a run with more than 1,000 steps shows
every step's real status, maximum-size definitions and big signals do not break lists."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from legato.runtime.settings import Settings
from tests.support.stack import running_stack, wait_for


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LEGATO_NATS_URL": settings.nats_url, "LEGATO_NAMESPACE": settings.namespace}
    return subprocess.run(
        [sys.executable, "-m", "legato.cli.main", *args], env=env, capture_output=True, text=True, timeout=120
    )


def wide_workflow(steps: int) -> str:
    body = "".join(f"  - {{id: s{i:05d}, type: noop}}\n" for i in range(steps))
    return f"id: wide\nrun_strategy: {{type: parallel, max_concurrency: 5}}\nsteps:\n{body}"


async def test_show_of_a_run_with_more_than_1000_steps_counts_and_pages_them_all(
    settings: Settings, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path) as (_stack, client):
        await client.push(wide_workflow(1500))
        run = await client.start("wide")
        info = await wait_for(client, run["instance_id"], timeout=180)
        assert info["status"] == "succeeded", info["error"]
        assert info["steps_total"] == 1500 and info["step_counts"] == {"succeeded": 1500}
        assert 0 < len(info["steps"]) <= 1000 and info["steps_next"] == len(info["steps"])
        rest = await client.get(run["instance_id"], steps_offset=info["steps_next"])
        seen = info["steps"] + rest["steps"]
        assert rest["steps_next"] is None
        assert [s["step_id"] for s in seen] == [f"s{i:05d}" for i in range(1500)]
        assert {s["status"] for s in seen} == {"succeeded"}

        out = cli(settings, "show", run["instance_id"])
        assert out.returncode == 0, out.stderr
        assert "steps: 1500 (1500 succeeded)" in out.stdout
        lines = [line.split() for line in out.stdout.splitlines() if line.startswith("s0")]
        assert len(lines) == 1500 and all(parts[1] == "succeeded" for parts in lines)
