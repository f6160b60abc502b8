"""Commands that talk to a running Legato through its NATS API (never to Postgres directly)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
from msgspec import UnsetType

from legato.cli import render
from legato.cli.errors import CliError, read_definition, refused_credentials, unreachable
from legato.cli.params import parse_params
from legato.cli.pause_commands import pause_text
from legato.client import ApiError, LegatoClient
from legato.config.settings import load_settings
from legato.core.progress import OtherProgress
from legato.core.statuses import InstanceStatus, StepStatus
from legato.protocol.replies import InstanceDetail, InstanceSummary, ProgressView, QueuedRun, StepView

__all__ = ["client_for", "parse_params", "print_instance"]


async def client_for(args: argparse.Namespace) -> LegatoClient:
    """A client connected as the settings and flags say; unreachable or refused NATS is a ``CliError``."""
    settings = load_settings(
        overrides={
            "nats_url": args.nats_url,
            "namespace": args.namespace,
            "nats_creds": getattr(args, "creds", None),
        }
    )
    try:
        return await LegatoClient.connect(
            settings.nats_url,
            namespace=settings.namespace,
            actor=os.environ.get("USER") or "cli",
            settings=settings,
        )
    except ConnectionError as exc:
        if "authorization" in str(exc).lower() or "authentication" in str(exc).lower():
            raise refused_credentials(settings.nats_url, args, settings.nats_creds) from None
        raise unreachable(settings.nats_url, args) from None


async def cmd_workflow_push(args: argparse.Namespace, c: LegatoClient) -> int:
    status = 0
    for name in args.files:
        path = Path(name)
        try:
            text = read_definition(path)
        except CliError as exc:
            print(f"legato: {exc}", file=sys.stderr)
            status = 1
            continue
        try:
            res = await c.push(text, source=str(path), activate=not args.no_activate)
        except ApiError as exc:
            status = 1
            print_api_error(exc)
            continue
        if args.json:
            render.dump_json(res)
        else:
            what = "new version" if res.created else "unchanged"
            print(f"{res.workflow_id}: version {res.version} ({what}); active version {res.active_version}")
    return status


async def collect_pages(
    fetch: Callable[[int, Any], Awaitable[Any]], *, rows: str, limit: int, next_key: str = "next"
) -> tuple[list[Any], Any]:
    """Up to ``limit`` rows of a paginated list and the cursor after them: ``fetch(limit, cursor)`` gets
    one typed page (at most 1,000 rows, fewer when they are large) whose ``rows`` attribute holds them."""
    got: list[Any] = []
    after: Any = None
    while len(got) < limit:  # bounded: every page returns at least one row, or ends the list
        page = await fetch(min(1000, limit - len(got)), after)
        items = getattr(page, rows)
        got.extend(items)
        after = getattr(page, next_key)
        if after is None or not items:
            break
    return got[:limit], after


async def cmd_workflow_list(args: argparse.Namespace, c: LegatoClient) -> int:
    archived = getattr(args, "archived", False)
    workflows, after = await collect_pages(
        lambda limit, after: c.list_workflows(limit=limit, after=after, include_archived=archived),
        rows="workflows",
        limit=max(1, args.limit),
    )
    if args.json:
        render.dump_json({"workflows": workflows, "next": after})
        return 0
    render.table(
        ["workflow", "active", "version", "strategy", "running", "queued", "blocked by", "description"],
        [
            [
                w.workflow_id,
                "archived" if w.archived_at else "yes" if w.active else "no",
                w.active_version,
                w.run_strategy + (f"({w.max_concurrency})" if w.run_strategy == "parallel" else ""),
                w.running,
                w.queued,
                w.blocked_by or "",
                (w.description or "").split("\n")[0],
            ]
            for w in workflows
        ],
    )
    return 0


async def cmd_workflow_show(args: argparse.Namespace, c: LegatoClient) -> int:
    res = await c.get_workflow(args.workflow, version=args.version)
    if args.json:
        render.dump_json(res)
        return 0
    print(
        f"workflow {res.workflow_id}  version {res.version} (active {res.active_version}, "
        f"latest {res.latest_version})  {'active' if res.active else 'INACTIVE'}"
    )
    print(
        f"run strategy: {res.run_strategy}"
        + (f" max_concurrency={res.max_concurrency}" if res.run_strategy == "parallel" else "")
        + f" (from {res.strategy_source})"
    )
    print(
        f"running {res.running}, queued {res.queued}"
        + (f", BLOCKED by {res.blocked_by}" if res.blocked_by else "")
    )
    print("versions: " + ", ".join(f"{v.version}" for v in res.versions))
    if res.source:
        print("\n" + str(res.source).rstrip())
    return 0


async def cmd_workflow_status(args: argparse.Namespace, c: LegatoClient) -> int:
    res = await c.workflow_status(args.workflow)
    if args.json:
        render.dump_json(res)
        return 0
    print(
        f"workflow {res.workflow_id}: {res.state.upper()}  strategy {res.run_strategy}"
        + (f"({res.max_concurrency})" if res.run_strategy == "parallel" else "")
    )
    if res.pause:
        print(pause_text(res.pause) + f"; legato workflow resume {res.workflow_id}")
    if res.blocked_by:
        print(
            f"blocked by failed run {res.blocked_by} since {render.short_time(res.blocked_since)}: "
            f"legato unblock {res.blocked_by} --reason ... or legato restart {res.blocked_by} --reason ..."
        )
    print("counts: " + ", ".join(f"{k} {v}" for k, v in sorted(res.counts.items())))
    _print_runs("running", res.running_runs)
    _print_runs("queued", res.queued_runs)
    return 0


def _trigger_kind(run: InstanceSummary) -> Any:
    return run.trigger.get("kind") if isinstance(run.trigger, dict) else None


def _print_runs(title: str, runs: Sequence[InstanceSummary]) -> None:
    if not runs:
        return
    print(f"\n{title}:")
    render.table(
        ["run", "pos" if title == "queued" else "started", "trigger"],
        [
            [
                r.instance_id,
                (r.position if isinstance(r, QueuedRun) else None) or render.short_time(r.started_at),
                _trigger_kind(r),
            ]
            for r in runs
        ],
    )


async def cmd_workflow_activate(args: argparse.Namespace, c: LegatoClient) -> int:
    res = await c.activate(args.workflow, version=args.version)
    print(f"{res.workflow_id}: active version {res.active_version}")
    return 0


async def cmd_workflow_deactivate(args: argparse.Namespace, c: LegatoClient) -> int:
    res = await c.deactivate(args.workflow)
    print(f"{res.workflow_id}: inactive")
    return 0


async def cmd_workflow_set_strategy(args: argparse.Namespace, c: LegatoClient) -> int:
    res = await c.set_run_strategy(
        args.workflow, args.strategy, max_concurrency=args.max_concurrency, reason=args.reason
    )
    by = f" set by {res.strategy_change.by}" if res.strategy_change and res.strategy_change.by else ""
    print(f"{res.workflow_id}: run strategy {res.run_strategy} (max_concurrency {res.max_concurrency}){by}")
    return 0


async def cmd_workflow_action(args: argparse.Namespace, c: LegatoClient) -> int:
    res = await c.workflow_action(args.action, args.workflow, reason=args.reason)
    print(f"{args.action} of all runs of {args.workflow} accepted (action {res.action_id})")
    return 0


async def cmd_start(args: argparse.Namespace, c: LegatoClient) -> int:
    res = await c.start(
        args.workflow, parse_params(args.param), request_id=args.request_id, version=args.version
    )
    if not args.wait:
        if args.json:
            render.dump_json(res)
        else:
            dup = " (duplicate request: existing run)" if res.duplicate else ""
            print(f"{res.instance_id}{dup}")
        return 0
    if not args.json:
        print(f"started {res.instance_id}; waiting…", file=sys.stderr)
    await c.wait(res.instance_id, timeout=args.timeout)
    info = await get_all_steps(c, res.instance_id)
    if args.json:
        render.dump_json(info)
    else:
        print_instance(info)
    return 0 if info.status == InstanceStatus.SUCCEEDED else 1


async def cmd_instances(args: argparse.Namespace, c: LegatoClient) -> int:
    runs, after = await collect_pages(
        lambda limit, cursor: c.list_runs(
            workflow_id=args.workflow, status=args.status, limit=limit, cursor=cursor
        ),
        rows="instances",
        next_key="next_cursor",
        limit=max(1, args.limit),
    )
    if args.json:
        render.dump_json({"instances": runs, "next_cursor": after})
        return 0
    positions: dict[str, int] = {}
    if args.workflow:
        status = await c.workflow_status(args.workflow)
        state = status.state.upper()
        extra = f" — blocked by {status.blocked_by}" if status.blocked_by else ""
        print(f"workflow {args.workflow}: {state}{extra}; running {status.running}, queued {status.queued}")
        positions = {r.instance_id: r.position for r in status.queued_runs}
    render.table(
        ["run", "workflow", "status", "trigger", "created", "took", "why / error"],
        [
            [
                r.instance_id,
                r.workflow_id,
                r.status + (f" #{positions[r.instance_id]}" if r.instance_id in positions else ""),
                _trigger_kind(r),
                render.short_time(r.created_at),
                render.duration(r.started_at, r.ended_at),
                r.error or render.reason_text(r.reason),
            ]
            for r in runs
        ],
    )
    return 0


SHOW_LOG_LINES = 10


def print_artifacts(steps: Sequence[StepView]) -> None:
    """The files attempts kept in the executors' artifact store (their ``artifacts`` output)."""
    rows = [
        f"  {s.step_id} attempt {a.attempt}: {f.get('path')} ({f.get('bytes')} bytes) {f.get('uri')}"
        for s in steps
        for a in s.attempts
        if isinstance(a.outputs, dict) and isinstance(a.outputs.get("artifacts"), list)
        for f in a.outputs["artifacts"]
        if isinstance(f, dict)
    ]
    if rows:
        print("\nartifacts:")
        for row in rows:
            print(row)


def _failed_items(progress: ProgressView | UnsetType | None) -> tuple[list[Any], int]:
    """The first failed iterations of a child step and how many failed in all."""
    if isinstance(progress, OtherProgress):
        items = progress.raw.get("failed_items") or []
        return list(items), int(progress.raw.get("failed_items_total") or 0)
    if progress is None or isinstance(progress, UnsetType):
        return [], 0
    return progress.failed_items, progress.failed_items_total


def print_instance(info: InstanceDetail) -> None:
    """A run's header, steps, attempts and errors as ``legato show`` prints them."""
    print(
        f"run {info.instance_id}  workflow {info.workflow_id} v{info.version}  "
        f"status {str(info.status).upper()}  run #{1 if info.run_number is None else info.run_number}"
    )
    if info.trace_id:
        print(f"trace {info.trace_id}")
    if info.trigger:
        kind = info.trigger.get("kind") if isinstance(info.trigger, dict) else None
        print(
            f"trigger {kind}  created {render.short_time(info.created_at)}  "
            f"took {render.duration(info.started_at, info.ended_at)}"
        )
    if info.reason:
        print(f"why: {render.reason_text(info.reason)}")
    if info.error:
        print(f"error: {info.error}")
    if info.params:
        print("params: " + json.dumps(info.params, sort_keys=True, default=str))
    steps = info.steps
    if info.step_counts:
        counts = ", ".join(f"{n} {status}" for status, n in sorted(info.step_counts.items()))
        total = info.steps_total if isinstance(info.steps_total, int) else len(steps)
        print(f"steps: {total} ({counts})")
    if steps:
        print()
        render.table(
            ["step", "status", "attempts", "took", "outputs / error"],
            [
                [
                    s.step_id,
                    s.status + (" (ignored)" if s.failure_ignored else ""),
                    len(s.attempts),
                    render.duration(s.started_at, s.ended_at),
                    s.error or render.reason_text(s.reason)
                    if s.status != StepStatus.SUCCEEDED
                    else json.dumps(s.outputs or {}, sort_keys=True, default=str),
                ]
                for s in steps
            ],
        )
        for s in steps:
            failed, total_failed = _failed_items(s.progress)
            if failed:
                more = total_failed - len(failed)
                print(
                    f"  {s.step_id}: failed iterations {failed}" + (f" and {more} more" if more > 0 else "")
                )
        print_artifacts(steps)
        shown = False
        for s in steps:
            for a in s.attempts:
                if not (a.error or a.log_tail):
                    continue
                if not shown:
                    print(
                        f"\nattempts (last {SHOW_LOG_LINES} lines of output; all of it: legato logs RUN [STEP]):"
                    )
                    shown = True
                error = f": {a.error}" if a.error else ""
                print(f"  {s.step_id} attempt {a.attempt} {a.status}{error}")
                for line in (a.log_tail or "").rstrip("\n").splitlines()[-SHOW_LOG_LINES:]:
                    print(f"    | {line}")
    if info.timeline:
        print("\ntimeline:")
        for t in info.timeline:
            who = f" [{t.actor}]" if t.actor else ""
            print(f"  {render.short_time(t.at)}  {t.message or t.event}{who}")


async def get_all_steps(c: LegatoClient, instance_id: str) -> InstanceDetail:
    """A run with every step (the API pages step details: ``steps_next``; this follows the pages)."""
    run = await c.get_run(instance_id)
    steps = list(run.steps)
    offset = run.steps_next
    for _ in range(100_000):  # bounded: each page holds at least one step
        if not isinstance(offset, int):
            break
        more = await c.get_run(instance_id, timeline_limit=0, steps_offset=offset)
        if not more.steps:
            break
        steps.extend(more.steps)
        offset = more.steps_next
    if isinstance(run.steps_next, UnsetType):
        return msgspec.structs.replace(run, steps=steps)
    return msgspec.structs.replace(run, steps=steps, steps_next=offset if isinstance(offset, int) else None)


async def cmd_show(args: argparse.Namespace, c: LegatoClient) -> int:
    info = await get_all_steps(c, args.instance)
    if getattr(args, "trace", False):
        from legato.cli.trace_view import build_trace_tree, render_trace_tree

        tree = build_trace_tree(render.plain(info))
        if args.json:
            render.dump_json(tree)
        else:
            print(render_trace_tree(tree))
        return 0
    if args.json:
        render.dump_json(info)
    else:
        print_instance(info)
    return 0


async def cmd_logs(args: argparse.Namespace, c: LegatoClient) -> int:
    """Everything stored of each attempt's output: the executor keeps the last 8 KB of stdout and
    stderr interleaved (older output is not stored anywhere)."""
    info = await c.get_run(args.instance)
    steps = [s for s in info.steps if args.step in (None, s.step_id)]
    if args.step is not None and not steps:
        known = ", ".join(s.step_id for s in info.steps) or "none yet"
        raise CliError(f"run {args.instance} has no step {args.step!r} (steps: {known})")
    attempts = [(s.step_id, a) for s in steps for a in s.attempts]
    if args.json:
        render.dump_json(
            [
                {
                    "step_id": step,
                    "attempt": a.attempt,
                    "status": a.status,
                    "error": a.error,
                    "log_tail": a.log_tail,
                }
                for step, a in attempts
            ]
        )
        return 0
    if not attempts:
        print(f"run {args.instance}: no attempt has run yet")
    for step, a in attempts:
        print(f"==> {step} attempt {a.attempt} ({a.status}) <==")
        text = a.log_tail
        if text is None:
            print("(no output)")
        else:
            if len(text.encode()) >= STORED_LOG_BYTES - 4:
                print(
                    f"(only the last {STORED_LOG_BYTES // 1024} KB of output is kept; earlier lines are lost)"
                )
            print(text, end="" if text.endswith("\n") else "\n")
    return 0


STORED_LOG_BYTES = 8 * 1024  # what the executor keeps of an attempt's output (executor/capture.py LOG_TAIL)


async def cmd_instance_action(args: argparse.Namespace, c: LegatoClient) -> int:
    step_id = getattr(args, "step", None) or getattr(args, "from_step", None)
    verb = "skip_step" if args.action == "skip" else args.action
    res = await c.instance_action(verb, args.instance, reason=args.reason, step_id=step_id)
    if args.json:
        render.dump_json(res)
    else:
        print(f"{args.action} {args.instance}: accepted (action {res.action_id})")
    return 0


def print_api_error(exc: ApiError) -> None:
    """An API error on stderr: its code and message, then each path-named definition error."""
    print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
    for item in exc.details.get("errors", []) if isinstance(exc.details, dict) else []:
        print(f"  {item['path']}: {item['message']}", file=sys.stderr)


async def cmd_tag_set(args: argparse.Namespace, c: LegatoClient) -> int:
    limit: int | None = args.limit
    res = await c.set_tag(args.tag, limit)
    if args.json:
        render.dump_json(res)
    elif limit is None:
        print(f"tag {args.tag}: no limit")
    else:
        print(
            f"tag {args.tag}: at most {res.limit} steps at once ({res.in_use} running, {res.waiting} waiting)"
        )
    return 0


def tag_limit(text: str) -> int | None:
    """``tag set`` LIMIT: a whole number >= 0, or ``none``/``unlimited`` (checked before connecting)."""
    if text in ("none", "unlimited"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number or 'none', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (or 'none'), got {value}")
    return value


async def cmd_tag_list(args: argparse.Namespace, c: LegatoClient) -> int:
    res = await c.list_tags()
    if args.json:
        render.dump_json(res)
        return 0
    render.table(
        ["tag", "limit", "in use", "waiting", "held by"],
        [
            [
                t.tag,
                t.limit,
                t.in_use,
                t.waiting,
                ", ".join(f"{h.instance_id}/{h.step_id}" for h in (t.held_by or [])[:3]),
            ]
            for t in res.tags
        ],
    )
    return 0
