"""``legato workflow pause|resume WF --reason``: hold a workflow's schedule and queue, and let it go."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from legato.cli import render
from legato.client import LegatoClient
from legato.protocol.replies import PauseInfo

ApiParser = Callable[..., argparse.ArgumentParser]


def add_pause_commands(wsub: Any, api: ApiParser) -> None:
    """Register ``pause`` and ``resume`` under ``legato workflow`` (``api`` adds ``--json``)."""
    sp = api(
        "pause", cmd_workflow_pause, "pause a workflow: cron fires follow catch_up, queued runs wait", wsub
    )
    sp.add_argument("workflow")
    sp.add_argument("--reason", required=True, help="why (shown in status and on every queued run)")
    sp = api("resume", cmd_workflow_resume, "resume a paused workflow (held cron fires catch up)", wsub)
    sp.add_argument("workflow")
    sp.add_argument("--reason", default="", help="why (logged)")


async def cmd_workflow_pause(args: argparse.Namespace, c: LegatoClient) -> int:
    """``legato workflow pause``: no new runs start until resumed; the reason is recorded."""
    res = await c.pause_workflow(args.workflow, reason=args.reason)
    if args.json:
        render.dump_json(res)
    elif res.changed:
        print(f"workflow {args.workflow} paused: {args.reason}")
    else:
        print(f"workflow {args.workflow} was already paused ({pause_text(res.pause)})")
    return 0


async def cmd_workflow_resume(args: argparse.Namespace, c: LegatoClient) -> int:
    """``legato workflow resume``: runs start again; held cron fires follow their catch-up policy."""
    res = await c.resume_workflow(args.workflow, reason=args.reason)
    if args.json:
        render.dump_json(res)
    else:
        print(f"workflow {args.workflow} " + ("resumed" if res.changed else "was not paused"))
    return 0


def pause_text(pause: PauseInfo | None) -> str:
    """A workflow's pause as one phrase (who, since when, why); empty when it is not paused."""
    if not pause:
        return ""
    by = f" by {pause.by}" if pause.by else ""
    why = f": {pause.reason}" if pause.reason else ""
    return f"paused{by} since {render.short_time(pause.since)}{why}"
