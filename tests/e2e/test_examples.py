"""Every file in examples/ runs end to end on the real stack and reaches its expected end: pushed as
shipped, started (or triggered by the signals it waits for, which the test sends), and finished as the
example says. A new example without a scenario here fails the test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from legato.client import LegatoClient
from legato.config.settings import Settings
from legato.protocol.replies import StartReply
from tests.support.plugin import install_example_plugin
from tests.support.stack import running_stack, wait_for

# One worker at a time: these share the venv the example plugin is pip-installed into (make test runs two workers).
pytestmark = pytest.mark.xdist_group("plugin")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DATE = "2026-03-01"
# The audit-chain attack of issue 14: the param must be echoed, never run.
HOSTILE_LEDGER = "main; id > out.txt; echo pwned"

Scenario = Callable[[LegatoClient], Awaitable[list[dict[str, Any]]]]


async def runs_of(client: LegatoClient, workflow_id: str, count: int = 1, timeout: float = 60.0) -> list[str]:
    """Ids of the first ``count`` runs of a workflow (started by a trigger), waiting for them."""
    deadline = time.monotonic() + timeout
    while True:
        listed = await client.call("instance.list", {"workflow_id": workflow_id})
        ids = [i["instance_id"] for i in listed["instances"]]
        if len(ids) >= count:
            return ids
        assert time.monotonic() < deadline, f"no run of {workflow_id} after {timeout}s"
        await asyncio.sleep(0.2)


async def finished(client: LegatoClient, started: StartReply) -> dict[str, Any]:
    return await wait_for(client, started.instance_id, timeout=120)


def steps_of(info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["step_id"]: s for s in info["steps"]}


async def hello(client: LegatoClient) -> list[dict[str, Any]]:
    info = await finished(client, await client.start("hello", {"name": "o'brien; $(touch x)", "shout": True}))
    steps = steps_of(info)
    assert "hello, O'BRIEN; $(TOUCH X)" in steps["greet"]["attempts"][0]["log_tail"]
    assert steps["greet"]["outputs"] == {"letters": len("o'brien; $(touch x)")}
    return [info]


async def audit_chain(client: LegatoClient) -> list[dict[str, Any]]:
    info = await finished(client, await client.start("audit-chain", {"ledger": HOSTILE_LEDGER}))
    steps = steps_of(info)
    assert steps["audit"]["attempts"][0]["log_tail"] == f"auditing ledger {HOSTILE_LEDGER}\n"
    # Unquoted in the example's command: once this ran `id > out.txt` and printed "pwned" on its own line.
    assert steps["remediate"]["attempts"][0]["log_tail"] == f"remediating 2 issues in {HOSTILE_LEDGER}\n"
    assert steps["recheck"]["status"] == "succeeded" and steps["sign-off"]["status"] == "skipped"
    return [info]


async def daily_backfill(client: LegatoClient) -> list[dict[str, Any]]:
    info = await finished(client, await client.start("daily-backfill", {"start_date": DATE, "days": 3}))
    assert steps_of(info)["backfill"]["status"] == "succeeded", info
    return [info]


async def table_snapshot(client: LegatoClient) -> list[dict[str, Any]]:
    return [await finished(client, await client.start("table-snapshot"))]


async def warehouse_to_daily_report(client: LegatoClient) -> list[dict[str, Any]]:
    """warehouse-load publishes warehouse_loaded; with fx_rates_ready it starts daily-report, whose last
    step waits for an approval."""
    load = await finished(client, await client.start("warehouse-load", {"date": DATE}))
    await client.send_signal("fx_rates_ready", {"date": DATE, "source": "ecb"}, signal_id="fx-1")
    [report_id] = await runs_of(client, "daily-report")
    await wait_for(client, report_id, statuses=("running",), timeout=60)
    await client.send_signal("approval", {"date": DATE, "by": "ada"}, signal_id="approval-1")
    report = await wait_for(client, report_id, timeout=120)
    assert report["params"] == {"date": DATE, "rows": 1200}
    assert steps_of(report)["send"]["params"]["approver"] == "ada"
    return [load, report]


async def billing(client: LegatoClient) -> list[dict[str, Any]]:
    await client.send_signal("orders_ready", {"date": DATE, "status": "done", "rows": 10}, signal_id="o-1")
    await client.send_signal("payments_ready", {"date": DATE, "source": "stripe"}, signal_id="p-1")
    [run_id] = await runs_of(client, "billing")
    return [await wait_for(client, run_id, timeout=120)]


def strategy_demo(workflow_id: str) -> Scenario:
    async def run(client: LegatoClient) -> list[dict[str, Any]]:
        return [await finished(client, await client.start(workflow_id, {"seconds": 0, "code": 0}))]

    return run


async def sales_rollup(client: LegatoClient) -> list[dict[str, Any]]:
    info = await finished(client, await client.start("sales-rollup", {"day": DATE}))
    steps = steps_of(info)
    assert steps["rollup"]["outputs"] == {"rows_affected": 1, "row": {"total": "220.00", "orders": 3}}
    assert steps["regions"]["outputs"]["rows"] == [
        {"region": "emea", "total": "140.00"},
        {"region": "apac", "total": "80"},
    ]
    assert steps["announce"]["attempts"][0]["log_tail"] == f"{DATE}: 220.00 from 3 orders, top region emea\n"
    return [info]


async def word_count(client: LegatoClient) -> list[dict[str, Any]]:
    info = await finished(client, await client.start("word-count", {"text": "a rose is a rose"}))
    assert steps_of(info)["report"]["attempts"][0]["log_tail"] == "5 words, most frequent a\n"
    return [info]


SCENARIOS: dict[str, Scenario] = {
    "hello.yaml": hello,
    "audit-chain.yaml": audit_chain,
    "daily-backfill.yaml": daily_backfill,
    "table-snapshot.yaml": table_snapshot,
    "warehouse-load.yaml": warehouse_to_daily_report,
    "daily-report.yaml": warehouse_to_daily_report,
    "billing.yaml": billing,
    "sql/sales-rollup.yaml": sales_rollup,
    "plugin/word-count.yaml": word_count,
    **{
        f"strategies/{name}.yaml": strategy_demo(name)
        for name in (
            "first-only-demo",
            "last-only-demo",
            "parallel-demo",
            "sequential-demo",
            "serial-latest-demo",
            "strict-demo",
        )
    },
}


@pytest.mark.slow
async def test_every_example_runs_to_its_expected_end(settings: Settings, tmp_path: Path) -> None:
    files = sorted(str(p.relative_to(EXAMPLES)) for p in EXAMPLES.rglob("*.yaml"))
    assert files and set(files) == set(SCENARIOS), "every example needs a scenario here"
    install_example_plugin()  # examples/plugin's step type, as `make install` does
    # The named connection of sales-rollup.yaml: the test database's server.
    env = {"LEGATO_CONNECTION_WAREHOUSE": settings.database_url}
    async with running_stack(settings, tmp_path, extra_env=env) as (_stack, client):
        for name in files:
            await client.push((EXAMPLES / name).read_text(), source=name)
        unique = list(dict.fromkeys(SCENARIOS.values()))
        results = await asyncio.gather(*(scenario(client) for scenario in unique))
    for scenario, infos in zip(unique, results, strict=True):
        for info in infos:
            failed = [
                (s["step_id"], [a.get("error") for a in s["attempts"]])
                for s in info["steps"]
                if s["status"] not in ("succeeded", "skipped")
            ]
            assert info["status"] == "succeeded", (
                scenario.__name__,
                info["workflow_id"],
                info["error"],
                failed,
            )
