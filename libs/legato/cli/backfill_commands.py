"""``legato backfill start|list|show|pause|resume|cancel|retry-failed``: backfills through the NATS API."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import Any

from msgspec import UNSET

from legato.cli import render
from legato.cli.commands import parse_params
from legato.client import LegatoClient
from legato.protocol.replies import BackfillInfo

ApiParser = Callable[..., argparse.ArgumentParser]
WAIT_POLL = 1.0
BAR_WIDTH = 30


def add_backfill_commands(sub: Any, api: ApiParser) -> None:
    """Register ``legato backfill …`` under the top-level subparsers (``api`` adds ``--json``)."""
    bf = sub.add_parser("backfill", help="one run per period of a date range, with progress and retries")
    bsub = bf.add_subparsers(dest="backfill_command", required=True, metavar="ACTION")
    sp = api("start", cmd_backfill_start, "start (or --dry-run) a backfill of WF over a range", bsub)
    sp.add_argument("workflow")
    sp.add_argument(
        "--from", dest="start", required=True, metavar="D", help="first period (date or ISO time)"
    )
    sp.add_argument("--to", dest="end", required=True, metavar="D", help="last period starts at or before")
    sp.add_argument("--step", default="1d", help="period length (1d, 6h, …; default 1d)")
    sp.add_argument(
        "--param", "-p", action="append", metavar="K=V", help="run param; may use ${backfill.period_start}"
    )
    sp.add_argument("--concurrency", type=int, default=4, help="runs of this backfill at once (default 4)")
    sp.add_argument(
        "--dry-run", action="store_true", help="show what would be created or skipped, change nothing"
    )
    sp.add_argument("--wait", action="store_true", help="show progress until it ends")
    sp = api("list", cmd_backfill_list, "backfills, newest first", bsub)
    sp.add_argument("workflow", nargs="?")
    sp.add_argument("--limit", type=int, default=50)
    sp = api("show", cmd_backfill_show, "a backfill's progress: counts, throughput, ETA, failures", bsub)
    sp.add_argument("backfill")
    sp.add_argument("--wait", action="store_true", help="show progress until it ends")
    for verb, text in (("pause", "stop submitting new periods"), ("resume", "submit periods again")):
        sp = api(verb, cmd_backfill_simple, text, bsub)
        sp.add_argument("backfill")
        sp.set_defaults(verb=verb)
    sp = api("cancel", cmd_backfill_cancel, "cancel: pending periods dropped, queued runs stopped", bsub)
    sp.add_argument("backfill")
    sp.add_argument("--reason", required=True)
    sp.add_argument("--running", action="store_true", help="also stop the runs already running")
    sp = api("retry-failed", cmd_backfill_simple, "re-run only the failed periods", bsub)
    sp.add_argument("backfill")
    sp.set_defaults(verb="retry_failed")


async def cmd_backfill_start(args: argparse.Namespace, c: LegatoClient) -> int:
    """``legato backfill start``: one run per period of a time range, paced, optionally waited for."""
    res = await c.start_backfill(
        args.workflow,
        args.start,
        args.end,
        step=args.step,
        params=parse_params(args.param),
        concurrency=args.concurrency,
        dry_run=args.dry_run,
    )
    if args.json and not args.wait:
        render.dump_json(res)
        return 0
    strategy = res.strategy
    under = f"under {strategy.run_strategy}" + (
        f"({strategy.max_concurrency})" if strategy.run_strategy == "parallel" else ""
    )
    if res.dry_run:
        plan = res.plan or []
        print(
            f"dry run: {res.periods} periods of {args.workflow}: {res.would_create} would be created, "
            f"{res.already_done} already done or in progress, {res.already_failed} already failed "
            f"(retry-failed re-runs those); at most {res.concurrency} at once {under}"
        )
        render.table(
            ["period start", "period end", "action", "existing run", "params"],
            [[p.period_start, p.period_end, p.action, p.status or "", p.params] for p in plan],
        )
        if res.periods > len(plan):
            print(f"… and {res.periods - len(plan)} more periods")
        return 0
    backfill_id = str(res.backfill_id)
    print(
        f"backfill {backfill_id}: {res.created} runs to create, {res.already_done} already done, "
        f"{res.already_failed} already failed; at most {res.concurrency} at once {under}"
    )
    if args.wait:
        return await _wait(c, backfill_id)
    return 0


async def cmd_backfill_list(args: argparse.Namespace, c: LegatoClient) -> int:
    """``legato backfill list``: the backfills of a workflow (or all), newest first."""
    res = await c.list_backfills(workflow_id=args.workflow, limit=args.limit)
    if args.json:
        render.dump_json(res)
        return 0
    render.table(
        ["backfill", "workflow", "status", "from", "to", "done", "remaining", "created"],
        [
            [
                b.backfill_id,
                b.workflow_id,
                b.status,
                b.from_,
                b.to,
                f"{b.finished}/{b.total}",
                b.remaining,
                render.short_time(b.created_at),
            ]
            for b in res.backfills
        ],
    )
    return 0


async def cmd_backfill_show(args: argparse.Namespace, c: LegatoClient) -> int:
    """``legato backfill show``: one backfill's progress, or (``--wait``) a live bar until it ends."""
    if args.wait:
        return await _wait(c, args.backfill)
    res = await c.show_backfill(args.backfill)
    if args.json:
        render.dump_json(res)
        return 0
    print(
        f"backfill {res.backfill_id} of {res.workflow_id}: {res.status.upper()}  "
        f"{res.from_} .. {res.to}, concurrency {res.concurrency}"
    )
    print(progress_line(res))
    print("counts: " + ", ".join(f"{k} {v}" for k, v in sorted(res.counts.items())))
    if res.cancelled_by or res.cancel_reason:
        print(f"cancelled by {res.cancelled_by or '?'}: {res.cancel_reason}")
    for f in res.failed_periods or []:
        print(f"failed {f.period_start}  run {f.instance_id}: {f.error or ''}")
    return 0


async def cmd_backfill_simple(args: argparse.Namespace, c: LegatoClient) -> int:
    """``legato backfill pause|resume|retry-failed``: one action on a backfill, without arguments."""
    res = await c.backfill_action(args.verb, args.backfill)
    if args.json:
        render.dump_json(res)
        return 0
    extra = f", {res.retrying} failed periods to re-run" if res.retrying is not UNSET else ""
    print(f"backfill {res.backfill_id}: {res.status}{extra}")
    return 0


async def cmd_backfill_cancel(args: argparse.Namespace, c: LegatoClient) -> int:
    """``legato backfill cancel``: stop starting periods (and, with ``--running``, stop the running ones)."""
    res = await c.cancel_backfill(args.backfill, reason=args.reason, running=args.running)
    if args.json:
        render.dump_json(res)
        return 0
    stopped = res.stopped_runs if res.stopped_runs is not UNSET else 0
    print(f"backfill {res.backfill_id}: cancelled, {stopped} runs stopped")
    return 0


def progress_line(res: BackfillInfo) -> str:
    """A one-line progress bar of a backfill: periods done of total, runs/s and the time left."""
    total = max(1, res.total)
    done = res.finished + res.counts.get("existing", 0) + res.counts.get("cancelled", 0)
    filled = int(BAR_WIDTH * done / total)
    rate = res.runs_per_second
    eta = res.eta_seconds
    return (
        f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{res.total}"
        + (f"  {rate:.2f} runs/s" if rate else "")
        + (f"  ETA {int(eta)}s" if eta is not None else "")
        + (f"  failed {res.counts.get('failed', 0)}" if res.counts.get("failed") else "")
    )


async def _wait(c: LegatoClient, backfill_id: str) -> int:
    """Redraw the progress line until the backfill is done or cancelled (Ctrl-C stops waiting only)."""
    tty = sys.stdout.isatty()
    while True:
        res = await c.show_backfill(backfill_id)
        line = progress_line(res)
        print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)
        if res.status in ("done", "cancelled"):
            if tty:
                print()
            failed = res.counts.get("failed", 0) + res.counts.get("timed_out", 0)
            print(
                f"backfill {backfill_id} {res.status}: "
                + ", ".join(f"{k} {v}" for k, v in sorted(res.counts.items()))
            )
            return 1 if failed or res.status == "cancelled" else 0
        await asyncio.sleep(WAIT_POLL)
