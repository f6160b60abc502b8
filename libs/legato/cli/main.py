"""``legato`` — the command line: dev stack, services, workflows, runs and operator actions."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from legato.cli import commands as C
from legato.cli.backfill_commands import add_backfill_commands
from legato.cli.pause_commands import add_pause_commands
from legato.cli.signal_commands import add_signal_commands
from legato.client import ApiError, LegatoClient
from legato.runtime.settings import SettingsError

Handler = Callable[[argparse.Namespace, LegatoClient], Awaitable[int]]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="legato", description="Legato workflow orchestrator")
    p.add_argument("--nats-url", help="NATS server (default: LEGATO_NATS_URL, then .legato/dev.json)")
    p.add_argument("--namespace", help="Legato namespace on that NATS (LEGATO_NAMESPACE)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def api(name: str, handler: Handler, help_text: str, parent: Any = sub) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = parent.add_parser(name, help=help_text)
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        sp.set_defaults(api_handler=handler)
        return sp

    dev = sub.add_parser(
        "dev", help="run everything locally: embedded NATS + Postgres, all services, examples"
    )
    dev.add_argument("--state-dir", default=None, help="where data and logs live (default .legato)")
    dev.add_argument("--database-url", help="use this PostgreSQL instead of an embedded one")
    dev.add_argument("--examples", default="examples", help="folder of workflow definitions to load")
    dev.add_argument("--no-demo", action="store_true", help="do not start demo runs")
    dev.add_argument("--executors", type=int, default=1, help="executor processes")
    dev.add_argument("--concurrency", type=int, default=16, help="attempts per executor")
    dev.set_defaults(local="dev")

    for svc in ("trigger", "scheduler", "executor", "signal-router"):
        sp = sub.add_parser(svc, help=f"run the {svc} service", add_help=False)
        sp.set_defaults(local="service", service=svc)

    wf = sub.add_parser("workflow", help="push, inspect and manage workflow definitions")
    wsub = wf.add_subparsers(dest="workflow_command", required=True, metavar="ACTION")
    sp = api(
        "push", C.cmd_workflow_push, "store definitions (a new version when changed) and activate them", wsub
    )
    sp.add_argument("files", nargs="+")
    sp.add_argument("--no-activate", action="store_true")
    sp = api("list", C.cmd_workflow_list, "list workflows", wsub)
    sp.add_argument("--limit", type=int, default=200)
    sp = api("show", C.cmd_workflow_show, "show a workflow and its definition", wsub)
    sp.add_argument("workflow")
    sp.add_argument("--version", type=int)
    sp = api("status", C.cmd_workflow_status, "running, queued and blocked runs of a workflow", wsub)
    sp.add_argument("workflow")
    sp = api("activate", C.cmd_workflow_activate, "activate a workflow (or a given version)", wsub)
    sp.add_argument("workflow")
    sp.add_argument("--version", type=int)
    sp = api("deactivate", C.cmd_workflow_deactivate, "deactivate a workflow (no new runs)", wsub)
    sp.add_argument("workflow")
    sp = api(
        "set-strategy", C.cmd_workflow_set_strategy, "change the run strategy without a new version", wsub
    )
    sp.add_argument("workflow")
    sp.add_argument("strategy")
    sp.add_argument("--max-concurrency", type=int)
    for action in ("stop", "kill", "unblock"):
        sp = api(action, C.cmd_workflow_action, f"{action} every run of a workflow", wsub)
        sp.add_argument("workflow")
        sp.add_argument("--reason", required=True)
        sp.set_defaults(action=action)
    add_pause_commands(wsub, api)
    sp = wsub.add_parser("validate", help="validate a definition file (no server needed)")
    sp.add_argument("files", nargs="+")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(local="validate")
    sp = wsub.add_parser("plan", help="dry run: the evaluated step graph for given params (no server needed)")
    sp.add_argument("file")
    sp.add_argument("--param", "-p", action="append", metavar="K=V")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(local="plan")

    tag = sub.add_parser("tag", help="named concurrency limits shared by all workflows")
    tsub = tag.add_subparsers(dest="tag_command", required=True, metavar="ACTION")
    sp = api(
        "set", C.cmd_tag_set, "set how many steps carrying TAG may run at once ('none' removes it)", tsub
    )
    sp.add_argument("tag")
    sp.add_argument("limit")
    api("list", C.cmd_tag_list, "list tags with their limits and holders", tsub)

    add_signal_commands(sub, api)
    add_backfill_commands(sub, api)

    sp = api("start", C.cmd_start, "start a run")
    sp.add_argument("workflow")
    sp.add_argument("--param", "-p", action="append", metavar="K=V")
    sp.add_argument("--request-id", help="idempotency key: the same id twice starts one run")
    sp.add_argument("--version", type=int, help="pin a definition version (default: the active one)")
    sp.add_argument("--wait", action="store_true", help="wait for the run to end and show it")
    sp.add_argument("--timeout", type=float, default=3600.0)
    sp = api("instances", C.cmd_instances, "list runs")
    sp.add_argument("workflow", nargs="?")
    sp.add_argument("--status")
    sp.add_argument("--limit", type=int, default=50)
    sp = api("show", C.cmd_show, "show a run: steps, attempts, outputs, errors, timeline")
    sp.add_argument("instance")
    sp.add_argument(
        "--trace", action="store_true", help="the run's span tree (from stored data; --json for the tree)"
    )
    for action, text in (
        ("stop", "cancel running steps and end the run stopped"),
        ("kill", "end the run at once"),
        ("restart", "run the failed steps again (or from --from STEP)"),
        ("unblock", "release a strict_sequential queue blocked by this failed run"),
    ):
        sp = api(action, C.cmd_instance_action, text)
        sp.add_argument("instance")
        sp.add_argument("--reason", required=True, help="why (recorded in the timeline)")
        if action == "restart":
            sp.add_argument("--from", dest="from_step", metavar="STEP")
        sp.set_defaults(action=action)
    sp = api("skip", C.cmd_instance_action, "skip a waiting, running or failed step of a run and go on")
    sp.add_argument("instance")
    sp.add_argument("step")
    sp.add_argument("--reason", required=True)
    sp.set_defaults(action="skip")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Service commands take their own flags: hand everything after the name to the service.
    if argv and argv[0] in ("trigger", "scheduler", "executor", "signal-router"):
        return run_service(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    local = getattr(args, "local", None)
    try:
        if local == "dev":
            from legato.cli.dev import run_dev

            return run_dev(args)
        if local == "validate":
            from legato.cli.local import cmd_validate

            return cmd_validate(args)
        if local == "plan":
            from legato.cli.local import cmd_plan

            return cmd_plan(args)
        return asyncio.run(_run_api(args))
    except SettingsError as exc:
        print(f"legato: {exc}", file=sys.stderr)
        return 2
    except ApiError as exc:
        C._print_api_error(exc)
        return 1
    except (ConnectionError, TimeoutError) as exc:
        print(f"legato: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


async def _run_api(args: argparse.Namespace) -> int:
    client = await C.client_for(args)
    try:
        result: int = await args.api_handler(args, client)
        return result
    finally:
        await client.close()


def run_service(name: str, argv: list[str]) -> int:
    """``legato <service> …`` is ``python -m legato.<service> …`` (the CLI never imports a service)."""
    module = f"legato.{name.replace('-', '_')}"
    os.execv(sys.executable, [sys.executable, "-m", module, *argv])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
