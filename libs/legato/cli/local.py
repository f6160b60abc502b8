"""Commands that need no server: ``workflow validate`` and ``workflow plan``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from legato.cli import render
from legato.cli.errors import CliError, read_definition
from legato.cli.params import parse_params
from legato.core import DefinitionError, parse_definition
from legato.core.plan import plan_workflow, validate_text
from legato.core.shell_command import shell_command_warnings


def cmd_validate(args: argparse.Namespace) -> int:
    """``legato workflow validate``: check definition files offline, each error named by its path."""
    failed = 0
    report: dict[str, list[dict[str, str]]] = {}
    warnings: dict[str, list[dict[str, str]]] = {}
    for name in args.files:
        path = Path(name)
        try:
            text = read_definition(path)
        except CliError as exc:
            report[name] = [{"path": "", "message": str(exc).removeprefix(f"{path}: ")}]
            failed += 1
            continue
        issues = validate_text(text, source=str(path))
        report[name] = [{"path": i.path, "message": i.message} for i in issues]
        failed += bool(issues)
        if not issues:
            raw = shell_command_warnings(parse_definition(text, source=str(path)))
            warnings[name] = [{"path": i.path, "message": i.message} for i in raw]
    if args.json:
        render.dump_json({"ok": failed == 0, "files": report, "warnings": warnings})
    else:
        for name, found in report.items():
            if not found:
                print(f"{name}: OK")
                for warning in warnings.get(name, []):
                    print(f"  warning: {warning['path']}: {warning['message']}")
                continue
            print(f"{name}: {len(found)} problem(s)")
            for issue in found:
                print(f"  {issue['path']}: {issue['message']}" if issue["path"] else f"  {issue['message']}")
    return 1 if failed else 0


def cmd_plan(args: argparse.Namespace) -> int:
    """``legato workflow plan``: the steps a start with these params would run, without a server."""
    path = Path(args.file)
    raw = parse_params(args.param)  # the parser `start` uses: the plan shows what `start` would run
    try:
        defn = parse_definition(read_definition(path), source=str(path))
    except DefinitionError as exc:
        print(f"{path}: {len(exc.errors)} problem(s)", file=sys.stderr)
        for issue in exc.errors:
            print(f"  {issue.path}: {issue.message}", file=sys.stderr)
        return 1
    try:
        plan = plan_workflow(defn, raw)
    except DefinitionError as exc:
        print(f"{path}: cannot plan with these params", file=sys.stderr)
        for issue in exc.errors:
            print(f"  {issue.path}: {issue.message}", file=sys.stderr)
        return 1
    if args.json:
        render.dump_json(plan.to_json())
    else:
        print(plan.to_text())
    for warning in shell_command_warnings(defn):
        print(f"{path}: warning: {warning}", file=sys.stderr)
    return 0
