"""``legato workflow archive|delete``: retire a workflow (refused while runs are active unless --force)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from legato.cli import render
from legato.client import LegatoClient

ApiParser = Callable[..., argparse.ArgumentParser]


def add_workflow_removal_commands(wsub: Any, api: ApiParser) -> None:
    """Register under ``legato workflow …`` (``api`` adds ``--json``)."""
    sp = api(
        "archive",
        cmd_workflow_remove,
        "deactivate and hide a workflow, keeping its runs (push or activate brings it back)",
        wsub,
    )
    sp.add_argument("workflow")
    sp.add_argument("--reason", required=True, help="why (recorded in the audit trail)")
    sp.add_argument("--force", action="store_true", help="even with queued or running runs (they finish)")
    sp.set_defaults(removal="archive")
    sp = api("delete", cmd_workflow_remove, "delete a workflow with its versions and runs", wsub)
    sp.add_argument("workflow")
    sp.add_argument("--reason", required=True, help="why (recorded in the audit trail)")
    sp.add_argument(
        "--force", action="store_true", help="even with queued or running runs (they are cancelled)"
    )
    sp.set_defaults(removal="delete")


async def cmd_workflow_remove(args: argparse.Namespace, c: LegatoClient) -> int:
    """``legato workflow archive|delete``: remove a workflow (``--force`` stops its runs first)."""
    remove = c.archive_workflow if args.removal == "archive" else c.delete_workflow
    res = await remove(args.workflow, reason=args.reason, force=args.force)
    if args.json:
        render.dump_json(res)
    else:
        print(f"workflow {args.workflow} {res.result}")
    return 0
