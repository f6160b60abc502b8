"""Backfills against real services: dry run without effect, one run per period (counted by the lines
the step appends), starting it again starts nothing, extending starts only the new periods, its own
concurrency limit inside parallel and strict_sequential, pause/resume, cancel with who and why, and
retry-failed re-running only the failed period."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from legato.client import ApiError, LegatoClient
from legato.config.settings import Settings
from tests.support.auth import creds_for
from tests.support.stack import running_stack


def workflow(
    wf: str, strategy: str, out: Path, *, sleep: float = 0.0, fail_day: str = "", marker: str = ""
) -> str:
    fail = (
        f'if [ "$LEGATO_PARAM_DAY" = "{fail_day}" ] && [ ! -f {marker} ]; then exit 3; fi; '
        if fail_day
        else ""
    )
    return f"""
id: {wf}
run_strategy: {strategy}
params:
  day: {{type: string}}
  until: {{type: string, default: ""}}
steps:
  - id: work
    type: shell
    command: '{fail}echo "$LEGATO_PARAM_DAY start $(date +%s.%N)" >> {out}; sleep {sleep}; echo "$LEGATO_PARAM_DAY end $(date +%s.%N)" >> {out}'
"""


async def cli(settings: Settings, *args: str) -> str:
    env = {
        **os.environ,
        "LEGATO_NATS_URL": settings.nats_url,
        "LEGATO_NAMESPACE": settings.namespace,
        # The recorded actor is the identity that signs the CLI's requests.
        "LEGATO_NATS_CREDS": creds_for("operator-ada") or "",
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "legato.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def days_done(out: Path) -> list[str]:
    if not out.exists():
        return []
    return sorted(line.split()[0] for line in out.read_text().splitlines() if line.split()[1] == "end")


def max_overlap(out: Path) -> int:
    events = []
    for line in out.read_text().splitlines():
        _day, kind, at = line.split()
        events.append((float(at), 1 if kind == "start" else -1))
    running = peak = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        running += delta
        peak = max(peak, running)
    return peak


async def start(client: LegatoClient, wf: str, frm: str, to: str, **extra: Any) -> dict[str, Any]:
    body = {
        "workflow_id": wf,
        "start": frm,
        "end": to,
        "params": {"day": "${backfill.period_start}"},
        **extra,
    }
    res: dict[str, Any] = await client.call("backfill.start", body)
    return res


async def wait_status(
    client: LegatoClient, bf: str, statuses: tuple[str, ...], timeout: float = 120.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        res: dict[str, Any] = await client.call("backfill.show", {"backfill_id": bf})
        if res["status"] in statuses:
            return res
        assert time.monotonic() < deadline, res
        await asyncio.sleep(0.3)


DAYS = [f"2026-01-0{d}" for d in range(1, 8)]


@pytest.mark.slow
async def test_backfill_periods_run_once_within_its_limit(settings: Settings, tmp_path: Path) -> None:
    par, seq = tmp_path / "par.txt", tmp_path / "seq.txt"
    async with running_stack(settings, tmp_path) as (_stack, client):
        await client.push(workflow("par", "{type: parallel, max_concurrency: 20}", par, sleep=0.6))
        await client.push(workflow("seq", "strict_sequential", seq, sleep=0.3))

        dry = await start(client, "par", DAYS[0], DAYS[4], dry_run=True, concurrency=2)
        assert (dry["would_create"], dry["already_done"]) == (5, 0)
        assert [p["params"]["day"] for p in dry["plan"]] == DAYS[:5]
        assert dry["strategy"]["run_strategy"] == "parallel"
        await asyncio.sleep(1.0)
        assert (await client.call("backfill.list", {}))["backfills"] == []  # no side effect
        assert not par.exists()

        first = await start(client, "par", DAYS[0], DAYS[4], concurrency=2)
        assert first["created"] == 5
        both = await start(client, "seq", DAYS[0], DAYS[3], concurrency=3)
        done = await wait_status(client, first["backfill_id"], ("done",))
        assert done["counts"] == {"succeeded": 5} and done["runs_per_second"] > 0
        assert days_done(par) == DAYS[:5]
        assert max_overlap(par) == 2  # its own limit, below the workflow's 20

        again = await start(client, "par", DAYS[0], DAYS[4], concurrency=2)
        assert (again["created"], again["already_done"], again["status"]) == (0, 5, "done")
        wider = await start(client, "par", DAYS[0], DAYS[6], concurrency=2)
        assert (wider["created"], wider["already_done"]) == (2, 5)
        await wait_status(client, wider["backfill_id"], ("done",))
        await asyncio.sleep(1.5)
        assert days_done(par) == DAYS  # each period exactly once

        await wait_status(client, both["backfill_id"], ("done",))
        assert days_done(seq) == DAYS[:4]
        assert max_overlap(seq) == 1  # strict_sequential holds although the backfill allows 3

        listed = await client.call("backfill.list", {"workflow_id": "par"})
        assert len(listed["backfills"]) == 3

        # the CLI: a dry run that extends the range, show with progress, pause/resume of the workflow
        text = await cli(
            settings,
            "backfill",
            "start",
            "par",
            "--from",
            DAYS[5],
            "--to",
            "2026-01-08",
            "--dry-run",
            "--param",
            "day=${backfill.period_start}",
        )
        assert "dry run: 3 periods of par: 1 would be created, 2 already done" in text, text
        assert "2026-01-08" in text
        text = await cli(settings, "backfill", "show", first["backfill_id"])
        assert "DONE" in text and "5/5" in text and "succeeded 5" in text, text
        text = await cli(settings, "workflow", "pause", "par", "--reason", "quarter close")
        assert "paused: quarter close" in text
        text = await cli(settings, "workflow", "status", "par")
        assert "PAUSED" in text and "paused by operator-ada" in text and "quarter close" in text, text
        await cli(settings, "workflow", "resume", "par")
        assert "PAUSED" not in await cli(settings, "workflow", "status", "par")

        with pytest.raises(ApiError, match="to: must not be before from"):
            await start(client, "par", DAYS[3], DAYS[0])
        with pytest.raises(ApiError, match="from: expected a date"):
            await start(client, "par", "yesterday", DAYS[0])
        with pytest.raises(ApiError, match=r"concurrency: must be 1\.\.1000"):
            await start(client, "par", DAYS[0], DAYS[1], concurrency=0)
        with pytest.raises(ApiError, match="unknown workflow"):
            await start(client, "nope", DAYS[0], DAYS[1])
        with pytest.raises(ApiError, match="at most 100000"):
            await start(client, "par", "2000-01-01", "2026-01-01", step="1h")


@pytest.mark.slow
async def test_backfill_pause_cancel_and_retry_failed(settings: Settings, tmp_path: Path) -> None:
    slow, flaky, marker = tmp_path / "slow.txt", tmp_path / "flaky.txt", tmp_path / "fixed"
    async with running_stack(settings, tmp_path) as (_stack, client):
        await client.push(workflow("slow", "{type: parallel, max_concurrency: 20}", slow, sleep=0.5))
        await client.push(
            workflow(
                "flaky", "{type: parallel, max_concurrency: 20}", flaky, fail_day=DAYS[1], marker=str(marker)
            )
        )

        bf = (await start(client, "slow", DAYS[0], "2026-01-30", concurrency=1))["backfill_id"]
        deadline = time.monotonic() + 60
        while len(days_done(slow)) < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        paused = await client.call("backfill.pause", {"backfill_id": bf})
        assert paused["status"] == "paused"
        await asyncio.sleep(2.0)
        held = len(days_done(slow))
        await asyncio.sleep(2.0)
        assert len(days_done(slow)) == held < 30  # nothing new while paused
        await client.call("backfill.resume", {"backfill_id": bf})
        deadline = time.monotonic() + 60
        while len(days_done(slow)) < held + 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        cancelled = await client.call("backfill.cancel", {"backfill_id": bf, "reason": "wrong range"})
        assert cancelled["status"] == "cancelled"
        assert (cancelled["cancelled_by"], cancelled["cancel_reason"]) == ("test", "wrong range")
        assert cancelled["counts"]["cancelled"] > 0
        await asyncio.sleep(2.0)
        final = len(days_done(slow))
        await asyncio.sleep(2.0)
        assert len(days_done(slow)) == final < 30
        with pytest.raises(ApiError, match="is cancelled"):
            await client.call("backfill.resume", {"backfill_id": bf})

        # runs a paused workflow holds are queued: cancel stops them, with who and why
        await client.call("workflow.pause", {"workflow_id": "slow", "reason": "hold"})
        held_bf = (await start(client, "slow", "2025-01-01", "2025-01-05", concurrency=2))["backfill_id"]
        deadline = time.monotonic() + 60
        while (res := await client.call("backfill.show", {"backfill_id": held_bf}))["counts"].get(
            "queued"
        ) != 2:
            assert time.monotonic() < deadline, res
            await asyncio.sleep(0.3)
        res = await client.call("backfill.cancel", {"backfill_id": held_bf, "reason": "not needed"})
        assert res["stopped_runs"] == 2
        deadline = time.monotonic() + 60
        while (res := await client.call("backfill.show", {"backfill_id": held_bf}))["counts"] != {
            "stopped": 2,
            "cancelled": 3,
        }:
            assert time.monotonic() < deadline, res
            await asyncio.sleep(0.3)
        runs = (await client.call("instance.list", {"workflow_id": "slow", "status": "stopped"}))["instances"]
        assert len(runs) == 2 and all("not needed" in (r["error"] or str(r["reason"])) for r in runs), runs
        await client.call("workflow.resume", {"workflow_id": "slow"})
        await asyncio.sleep(2.0)
        assert not any(d.startswith("2025") for d in days_done(slow))

        bf = (await start(client, "flaky", DAYS[0], DAYS[2], concurrency=3))["backfill_id"]
        res = await wait_status(client, bf, ("done",))
        assert res["counts"] == {"succeeded": 2, "failed": 1}
        assert [f["period_start"][:10] for f in res["failed_periods"]] == [DAYS[1]]
        marker.write_text("ok")
        retried = await client.call("backfill.retry_failed", {"backfill_id": bf})
        assert retried["retrying"] == 1
        deadline = time.monotonic() + 60
        while (res := await client.call("backfill.show", {"backfill_id": bf}))["counts"] != {"succeeded": 3}:
            assert time.monotonic() < deadline, res
            await asyncio.sleep(0.3)
        assert days_done(flaky) == DAYS[:3]  # the succeeded periods did not run again


def start_order(out: Path) -> list[str]:
    lines = [line.split() for line in out.read_text().splitlines()]
    return [day for day, kind, _at in sorted(lines, key=lambda x: float(x[2])) if kind == "start"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "limit"), [("strict_sequential", 1), ("{type: parallel, max_concurrency: 2}", 2)]
)
async def test_live_runs_start_before_queued_backfill_runs(
    settings: Settings, tmp_path: Path, strategy: str, limit: int
) -> None:
    """Backfill runs queue behind the workflow's limit (the workflow paused meanwhile so the queue is
    known); live API runs queued after them start first, the limits hold, and the positions the API
    explains ("why not running") are the start order."""
    out = tmp_path / "runs.txt"
    async with running_stack(settings, tmp_path) as (_stack, client):
        await client.push(workflow("wf", strategy, out, sleep=0.4))
        await client.call("workflow.pause", {"workflow_id": "wf", "reason": "fill the queue"})
        bf = (await start(client, "wf", DAYS[0], DAYS[5], concurrency=3))["backfill_id"]
        deadline = time.monotonic() + 60
        while (res := await client.call("backfill.show", {"backfill_id": bf}))["counts"].get("queued") != 3:
            assert time.monotonic() < deadline, res
            await asyncio.sleep(0.2)
        assert res["priority"] == "low"
        live = [(await client.start("wf", params={"day": f"live-{i}"})).instance_id for i in range(2)]
        deadline = time.monotonic() + 60
        while (
            len((status := await client.call("workflow.status", {"workflow_id": "wf"}))["queued_runs"]) != 5
        ):
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.2)
        queued = status["queued_runs"]
        assert [r["instance_id"] for r in queued[:2]] == live, queued
        assert [r["reason"]["position"] for r in queued] == [1, 2, 3, 4, 5]
        await client.call("workflow.resume", {"workflow_id": "wf"})
        await wait_status(client, bf, ("done",))
        deadline = time.monotonic() + 60
        while len(days_done(out)) < 8:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        order = start_order(out)
        assert sorted(order[:2]) == ["live-0", "live-1"], order  # before the 3 backfill runs queued earlier
        # then the backfill's, oldest first (two may start together under parallel)
        assert order[2:] == DAYS[:6] if limit == 1 else sorted(order[2:]) == DAYS[:6], order
        assert max_overlap(out) <= limit  # the workflow's limit holds
        text = await cli(settings, "backfill", "show", bf, "--wait")
        assert f"[{'#' * 30}] 6/6" in text and f"backfill {bf} done: succeeded 6" in text, text
        if limit == 1:
            return
        # the CLI: --priority, and cancel --running stops the running runs, recorded with who and why
        long = tmp_path / "long.txt"
        await client.push(workflow("long", "{type: parallel, max_concurrency: 20}", long, sleep=120))
        text = await cli(
            settings,
            *("backfill", "start", "long", "--from", DAYS[0], "--to", DAYS[3], "--concurrency", "2"),
            *("--priority", "normal", "--param", "day=${backfill.period_start}"),
        )
        assert "4 runs to create" in text and "priority normal" in text, text
        bf = text.split()[1].rstrip(":")
        deadline = time.monotonic() + 60
        while (res := await client.call("backfill.show", {"backfill_id": bf}))["counts"].get("running") != 2:
            assert time.monotonic() < deadline, res
            await asyncio.sleep(0.2)
        assert res["priority"] == "normal"
        text = await cli(settings, "backfill", "cancel", bf, "--reason", "wrong data", "--running")
        deadline = time.monotonic() + 60
        while (res := await client.call("backfill.show", {"backfill_id": bf}))["counts"] != {
            "stopped": 2,
            "cancelled": 2,
        }:
            assert time.monotonic() < deadline, res
            await asyncio.sleep(0.3)
        assert (res["cancelled_by"], res["cancel_reason"]) == ("operator-ada", "wrong data")
        runs = (await client.call("instance.list", {"workflow_id": "long", "status": "stopped"}))["instances"]
        assert len(runs) == 2
        assert all("wrong data" in (r["error"] or "") + str(r["reason"]) for r in runs), runs


async def test_a_run_end_fills_the_backfills_free_slot_at_once(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The feeder follows the run-end events of a backfilled workflow (and the API wakes it when a
    backfill starts): with its poll a minute apart, a 12-period backfill at concurrency 2 still ends in
    seconds, where the poll alone would take six rounds, six minutes."""
    monkeypatch.setenv("LEGATO_BACKFILL_POLL_INTERVAL", "60")
    out = tmp_path / "quick.txt"
    days = [f"2026-01-{d:02d}" for d in range(1, 13)]
    async with running_stack(settings, tmp_path) as (_stack, client):
        await client.push(workflow("quick", "{type: parallel, max_concurrency: 20}", out))
        await asyncio.sleep(1.0)  # the feeder's first round (nothing to do) is behind it: it now waits
        started = await start(client, "quick", days[0], days[-1], concurrency=2)
        assert started["created"] == 12
        done = await wait_status(client, started["backfill_id"], ("done",), timeout=50)
        assert done["counts"] == {"succeeded": 12}
        assert days_done(out) == days
        assert max_overlap(out) <= 2  # woken early, it still keeps the backfill's own limit
