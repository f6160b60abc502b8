"""examples/code/daily_sales.py, a workflow written with legato.flow, pushed by the real CLI as
``file.py:attr`` to a real stack and run to success; the stored definition is the builder's."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from legato.config.settings import Settings
from legato.core import definition_digest
from legato.flow import load_workflow
from tests.support.stack import running_stack, wait_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = "examples/code/daily_sales.py:flow"


def legato(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "legato.cli.main", *args],
        env=env,
        cwd=ROOT,  # the executor imports examples.code.sales_steps from the checkout, as with `make run`
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_daily_sales_pushed_from_python_runs_to_success(settings: Settings, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEGATO_") or k == "LEGATO_NATS_CREDS"}
    env["LEGATO_STATE_DIR"] = str(tmp_path / ".legato")
    url = ["--nats-url", settings.nats_url, "--namespace", settings.namespace]
    async with running_stack(settings, tmp_path) as (_stack, client):
        pushed = await asyncio.to_thread(legato, "workflow", "push", EXAMPLE, *url, env=env)
        assert pushed.returncode == 0, pushed.stderr
        assert pushed.stdout.startswith("daily-sales: version 1 (new version)"), pushed.stdout
        # Pushed again: unchanged, and the server's digest is the one of the builder's own definition.
        again = await asyncio.to_thread(legato, "workflow", "push", EXAMPLE, "--json", *url, env=env)
        assert again.returncode == 0, again.stderr
        reply = json.loads(again.stdout)
        assert (reply["version"], reply["created"]) == (1, False)
        assert reply["digest"] == definition_digest(load_workflow(str(ROOT / EXAMPLE)).definition())

        # A reference that leads nowhere is one line naming what is missing; nothing is pushed.
        missing = await asyncio.to_thread(
            legato, "workflow", "push", EXAMPLE.replace(":flow", ":flw"), *url, env=env
        )
        assert missing.returncode == 1
        assert missing.stderr.strip().splitlines() == [
            "legato: examples/code/daily_sales.py:flw: examples/code/daily_sales.py has no attribute 'flw'"
        ]

        started = await client.start("daily-sales", {"day": "2026-03-01", "regions": ["emea", "apac"]})
        info = await wait_for(client, started.instance_id, timeout=120)
        steps = {s["step_id"]: s for s in info["steps"]}
        assert info["status"] == "succeeded", (info["error"], {k: s["status"] for k, s in steps.items()})
        assert steps["extract"]["outputs"] == {"rows": 120}
        assert steps["load"]["outputs"] == {"loaded": 120, "day": "2026-03-01"}
        assert steps["announce"]["attempts"][0]["log_tail"] == "loaded 120 rows of 2026-03-01\n"
