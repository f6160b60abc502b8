"""``legato`` — the command line: dev stack, services, workflows, runs and operator actions."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors

from legato.cli import commands
from legato.cli.backfill_commands import add_backfill_commands
from legato.cli.dead_letter_commands import add_dead_letter_commands
from legato.cli.errors import CliError, nats_origin
from legato.cli.params import ParamSyntaxError, parse_params
from legato.cli.pause_commands import add_pause_commands
from legato.cli.signal_commands import add_signal_commands
from legato.cli.workflow_removal import add_workflow_removal_commands
from legato.client import ApiError, LegatoClient
from legato.config.settings import SettingsError, load_settings

Handler = Callable[[argparse.Namespace, LegatoClient], Awaitable[int]]


def build_parser() -> argparse.ArgumentParser:
    """The ``legato`` argument parser: every subcommand with its flags and handler."""
    p = argparse.ArgumentParser(prog="legato", description="Legato workflow orchestrator")
    p.add_argument("--nats-url", help="NATS server (default: LEGATO_NATS_URL, then .legato/dev.json)")
    p.add_argument(
        "--creds", help="nkey seed file to connect with (default: LEGATO_NATS_CREDS, then .legato/dev.json)"
    )
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

    sp = sub.add_parser("web", help="the ops web console (legato web --help)", add_help=False)
    sp.set_defaults(local="web")

    wf = sub.add_parser("workflow", help="push, inspect and manage workflow definitions")
    wsub = wf.add_subparsers(dest="workflow_command", required=True, metavar="ACTION")
    sp = api(
        "push",
        commands.cmd_workflow_push,
        "store definitions (a new version when changed) and activate them",
        wsub,
    )
    sp.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="definition files (YAML/JSON), or module:attr / path/to/file.py:attr naming a legato.flow.Workflow",
    )
    sp.add_argument("--no-activate", action="store_true")
    sp = api("list", commands.cmd_workflow_list, "list workflows", wsub)
    sp.add_argument("--limit", type=int, default=200)
    sp.add_argument("--archived", action="store_true", help="archived workflows too")
    sp = api("show", commands.cmd_workflow_show, "show a workflow and its definition", wsub)
    sp.add_argument("workflow")
    sp.add_argument("--version", type=int)
    sp = api("status", commands.cmd_workflow_status, "running, queued and blocked runs of a workflow", wsub)
    sp.add_argument("workflow")
    sp = api("activate", commands.cmd_workflow_activate, "activate a workflow (or a given version)", wsub)
    sp.add_argument("workflow")
    sp.add_argument("--version", type=int)
    sp = api("deactivate", commands.cmd_workflow_deactivate, "deactivate a workflow (no new runs)", wsub)
    sp.add_argument("workflow")
    sp = api(
        "set-strategy",
        commands.cmd_workflow_set_strategy,
        "change the run strategy without a new version",
        wsub,
    )
    sp.add_argument("workflow")
    sp.add_argument("strategy")
    sp.add_argument("--max-concurrency", type=int)
    sp.add_argument("--reason", default="", help="why (recorded with you in the workflow's audit trail)")
    for action in ("stop", "kill", "unblock"):
        sp = api(action, commands.cmd_workflow_action, f"{action} every run of a workflow", wsub)
        sp.add_argument("workflow")
        sp.add_argument("--reason", required=True)
        sp.set_defaults(action=action)
    add_workflow_removal_commands(wsub, api)
    add_pause_commands(wsub, api)
    sp = wsub.add_parser("validate", help="validate a definition file (no server needed)")
    sp.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="definition files (YAML/JSON), or module:attr / path/to/file.py:attr naming a legato.flow.Workflow",
    )
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(local="validate")
    sp = wsub.add_parser("plan", help="dry run: the evaluated step graph for given params (no server needed)")
    sp.add_argument(
        "file", metavar="FILE", help="a definition file, or module:attr naming a legato.flow.Workflow"
    )
    sp.add_argument("--param", "-p", action="append", metavar="K=V")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(local="plan")

    tag = sub.add_parser("tag", help="named concurrency limits shared by all workflows")
    tsub = tag.add_subparsers(dest="tag_command", required=True, metavar="ACTION")
    sp = api(
        "set",
        commands.cmd_tag_set,
        "set how many steps carrying TAG may run at once ('none' removes it)",
        tsub,
    )
    sp.add_argument("tag")
    sp.add_argument("limit", type=commands.tag_limit)
    api("list", commands.cmd_tag_list, "list tags with their limits and holders", tsub)

    add_signal_commands(sub, api)
    add_dead_letter_commands(sub, api)
    add_backfill_commands(sub, api)

    sp = api("start", commands.cmd_start, "start a run")
    sp.add_argument("workflow")
    sp.add_argument("--param", "-p", action="append", metavar="K=V")
    sp.add_argument("--request-id", help="idempotency key: the same id twice starts one run")
    sp.add_argument("--version", type=int, help="pin a definition version (default: the active one)")
    sp.add_argument("--wait", action="store_true", help="wait for the run to end and show it")
    sp.add_argument("--timeout", type=float, default=3600.0)
    sp = api("instances", commands.cmd_instances, "list runs")
    sp.add_argument("workflow", nargs="?")
    sp.add_argument("--status")
    sp.add_argument("--limit", type=int, default=50)
    sp = api("show", commands.cmd_show, "show a run: steps, attempts, outputs, errors, timeline")
    sp.add_argument("instance")
    sp.add_argument(
        "--trace", action="store_true", help="the run's span tree (from stored data; --json for the tree)"
    )
    sp = api("logs", commands.cmd_logs, "the captured output of a run's attempts (all steps, or one)")
    sp.add_argument("instance")
    sp.add_argument("step", nargs="?")
    for action, text in (
        ("stop", "cancel running steps and end the run stopped"),
        ("kill", "end the run at once"),
        ("restart", "run the failed steps again (or from --from STEP)"),
        ("unblock", "release a strict_sequential queue blocked by this failed run"),
    ):
        sp = api(action, commands.cmd_instance_action, text)
        sp.add_argument("instance")
        sp.add_argument("--reason", required=True, help="why (recorded in the timeline)")
        if action == "restart":
            sp.add_argument("--from", dest="from_step", metavar="STEP")
        sp.set_defaults(action=action)
    sp = api(
        "skip", commands.cmd_instance_action, "skip a waiting, running or failed step of a run and go on"
    )
    sp.add_argument("instance")
    sp.add_argument("step")
    sp.add_argument("--reason", required=True)
    sp.set_defaults(action="skip")
    _accept_global_flags_after_the_command(p)
    return p


def _accept_global_flags_after_the_command(p: argparse.ArgumentParser) -> None:
    """``legato dev --nats-url URL`` works like ``legato --nats-url URL dev`` (in every subcommand).

    SUPPRESS as the default: a flag not given after the command leaves the one given before it alone.
    """
    todo = [p]
    while todo:  # bounded: the parser tree is finite
        parser = todo.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in dict.fromkeys(action.choices.values()):
                    child.add_argument(
                        "--nats-url",
                        default=argparse.SUPPRESS,
                        help="NATS server (same as before the command)",
                    )
                    child.add_argument(
                        "--namespace",
                        default=argparse.SUPPRESS,
                        help="Legato namespace (same as before the command)",
                    )
                    todo.append(child)


def main(argv: list[str] | None = None) -> int:
    """The ``legato`` entry point: parse, dispatch, and turn user-fixable errors into one line; the exit
    code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Service commands take their own flags: hand everything after the name to the service.
    if argv and argv[0] in ("trigger", "scheduler", "executor", "signal-router"):
        return run_service(argv[0], argv[1:])
    if argv and argv[0] == "web":  # the console takes its own flags (legato.web.__main__)
        from legato.web.__main__ import main as web_main

        return web_main(argv[1:])
    args = build_parser().parse_args(argv)
    local = getattr(args, "local", None)
    try:
        return _dispatch(args, local)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `legato … | head`: the reader left; nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:  # the last net: a user sees one line, never a traceback
        if os.environ.get("LEGATO_DEBUG"):
            raise
        print(
            f"legato: unexpected error: {type(exc).__name__}: {exc} (LEGATO_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1


def _dispatch(args: argparse.Namespace, local: str | None) -> int:
    _quiet_nats_client_logs()
    try:
        parse_params(getattr(args, "param", None))  # a bad --param is reported before connecting
        if local == "dev":
            from legato.cli.dev import cmd_dev

            return cmd_dev(args)
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
        commands.print_api_error(exc)
        return 1
    except BrokenPipeError:
        raise  # a ConnectionError too, but not about NATS: main() ends quietly
    except (CliError, ParamSyntaxError, ConnectionError, TimeoutError) as exc:
        print(f"legato: {exc}", file=sys.stderr)
        return 1
    except nats.errors.MaxPayloadError:
        print("legato: the request is larger than the NATS server accepts in one message", file=sys.stderr)
        return 1


def _quiet_nats_client_logs() -> None:
    """nats.py logs a traceback per failed connect attempt; the CLI reports the failure once itself."""
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    logging.getLogger("nats.aio.client").setLevel(logging.CRITICAL)


async def _run_api(args: argparse.Namespace) -> int:
    client = await commands.client_for(args)
    try:
        result: int = await args.api_handler(args, client)
        return result
    except ApiError as exc:
        if exc.code != "unavailable":
            raise
        url = load_settings(overrides={"nats_url": args.nats_url, "namespace": args.namespace}).nats_url
        raise CliError(
            f"NATS at {url} (from {nats_origin(args)}) answers, but no Legato trigger service does: "
            "start the stack with `make run`, or check --namespace"
        ) from None
    finally:
        await client.close()


def run_service(name: str, argv: list[str]) -> int:
    """``legato <service> …`` is ``python -m legato.<service> …`` (the CLI never imports a service)."""
    module = f"legato.{name.replace('-', '_')}"
    os.execv(sys.executable, [sys.executable, "-m", module, *argv])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
