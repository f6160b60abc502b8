"""``legato signal send|list|pending|lineage|schema``: signals through the NATS API."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TypeVar

from msgspec import UnsetType

from legato.cli import render
from legato.cli.commands import collect_pages, parse_params
from legato.client import LegatoClient
from legato.protocol.replies import LineageRun, LineageSignal, WaitingStep

ApiParser = Callable[..., argparse.ArgumentParser]
T = TypeVar("T")


def add_signal_commands(sub: Any, api: ApiParser) -> None:
    """Register ``legato signal …`` under the top-level subparsers (``api`` adds ``--json``)."""
    sig = sub.add_parser("signal", help="send signals, list them, inspect partial joins and lineage")
    ssub = sig.add_subparsers(dest="signal_command", required=True, metavar="ACTION")
    sp = api("send", cmd_signal_send, "publish a signal: legato signal send NAME k=v …", ssub)
    sp.add_argument("name")
    sp.add_argument("params", nargs="*", metavar="K=V")
    sp.add_argument("--id", help="the signal's id (the same id twice is stored once)")
    sp = api("list", cmd_signal_list, "stored signals, newest first", ssub)
    sp.add_argument("name", nargs="?")
    sp.add_argument("--rejected", action="store_true", help="only signals that were rejected, with why")
    sp.add_argument("--limit", type=int, default=50)
    sp = api("pending", cmd_signal_pending, "partial joins, and steps waiting for signals", ssub)
    sp.add_argument("workflow", nargs="?")
    sp.add_argument("--limit", type=int, default=100)
    sp = api("lineage", cmd_signal_lineage, "what a signal started, or what started a run, recursively", ssub)
    sp.add_argument("name", nargs="?", help="signal name (with ID)")
    sp.add_argument("id", nargs="?", help="signal id")
    sp.add_argument("--run", help="a run id instead of a signal")
    sp.add_argument("--depth", type=int, default=5)
    sp = api("schema", cmd_signal_schema, "declare a signal's required fields and field types", ssub)
    sp.add_argument("name")
    sp.add_argument("--required", default="", help="comma-separated field names")
    sp.add_argument("--field", action="append", default=[], metavar="NAME=TYPE")
    sp.add_argument("--remove", action="store_true", help="remove the schema")


async def cmd_signal_send(args: argparse.Namespace, c: LegatoClient) -> int:
    """``legato signal send``: publish a signal (a duplicate id is reported, not stored twice)."""
    res = await c.send_signal(args.name, parse_params(args.params), signal_id=args.id)
    if args.json:
        render.dump_json(res)
    else:
        dup = " (duplicate: already stored)" if res.duplicate else ""
        print(f"signal {res.name} id {res.id} stored at stream seq {res.stream_seq}{dup}")
    return 0


async def cmd_signal_list(args: argparse.Namespace, c: LegatoClient) -> int:
    """``legato signal list``: stored (or ``--rejected``) signals, newest first."""
    signals, after = await collect_pages(
        lambda limit, before: c.list_signals(
            name=args.name, rejected=args.rejected, limit=limit, before=before
        ),
        rows="signals",
        limit=max(1, args.limit),
    )
    if args.json:
        render.dump_json({"signals": signals, "next": after})
        return 0
    render.table(
        ["name", "id", "published", "publisher", "status", "params / error"],
        [
            [
                s.name,
                s.id,
                render.short_time(s.published_at),
                s.publisher or "",
                "REJECTED" if s.rejected else "ok",
                s.error if s.rejected else render.compact_json(s.params),
            ]
            for s in signals
        ],
    )
    return 0


async def cmd_signal_pending(args: argparse.Namespace, c: LegatoClient) -> int:
    """``legato signal pending``: joins and step waits still missing signals."""
    res = await c.pending_signals(workflow_id=args.workflow, limit=args.limit)
    if args.json:
        render.dump_json(res)
        return 0
    if not res.triggers and not res.steps:
        print("nothing waits for signals")
    for t in res.triggers:
        state = "" if t.active else " (inactive)"
        print(
            f"{t.workflow_id} / {t.trigger_id}{state}: signals {', '.join(t.signals)} joined on "
            f"{', '.join(t.join) or '-'}; {t.total} tuple(s) waiting"
        )
        if not t.tuples:
            continue
        render.table(
            ["tuple", "arrived", "missing", "expires"],
            [
                [
                    render.compact_json(x.join_values),
                    ", ".join(f"{a.leg}={a.id}" for a in x.arrived),
                    ", ".join(x.missing),
                    ("EXPIRED " if x.expired else "") + render.short_time(x.expires_at),
                ]
                for x in t.tuples
            ],
        )
    _print_waiting_steps(res.steps)
    return 0


def _print_waiting_steps(steps: list[WaitingStep]) -> None:
    if not steps:
        return
    print("steps waiting for signals:")
    render.table(
        ["run", "workflow", "step", "signal", "match", "since"],
        [
            [
                w.instance_id,
                w.workflow_id,
                w.step_id,
                w.signal,
                ", ".join(
                    f"{k} {p['op']} {render.compact_json(p['value'])}" for k, p in (w.match or {}).items()
                ),
                render.short_time(w.since),
            ]
            for w in steps
        ],
    )


async def cmd_signal_lineage(args: argparse.Namespace, c: LegatoClient) -> int:
    """``legato signal lineage``: which signals started a run and which runs a signal started."""
    if args.run:
        res = await c.lineage(instance_id=args.run, depth=args.depth)
    elif args.name and args.id:
        res = await c.lineage(name=args.name, signal_id=args.id, depth=args.depth)
    else:
        raise SystemExit("legato signal lineage: give NAME ID, or --run RUN")
    if args.json:
        render.dump_json(res)
        return 0
    if isinstance(res.run, LineageRun):
        print_run(res.run, 0)
    elif isinstance(res.signal, LineageSignal):
        print_signal(res.signal, 0)
    return 0


def _set(value: T | UnsetType) -> T | None:
    """A field the reply may leave out: None when it did."""
    return None if isinstance(value, UnsetType) else value


def print_signal(node: LineageSignal, indent: int) -> None:
    """One signal of a lineage tree, with the run that published it, indented."""
    pad = "  " * indent
    who = f" from {node.publisher}" if _set(node.publisher) else ""
    print(f"{pad}signal {node.name} {node.id}{who} {render.compact_json(_set(node.params))}")
    up = _set(node.published_by)
    if up:
        print(f"{pad}  published by run {up.instance_id} ({_set(up.workflow_id)}, {_set(up.status)})")
        for s in _set(up.started_by) or []:
            print_signal(s, indent + 2)
    for run in _set(node.triggered) or []:
        print(f"{pad}  -> started run {run.instance_id} of {_set(run.workflow_id)} ({_set(run.status)})")
        for s in _set(run.published) or []:
            print_signal(s, indent + 2)
    for run in _set(node.unblocked) or []:
        print(f"{pad}  -> unblocked step {_set(run.step_id)} of run {run.instance_id} ({_set(run.status)})")
        for s in _set(run.published) or []:
            print_signal(s, indent + 2)


def print_run(run: LineageRun, indent: int) -> None:
    """One run of a lineage tree, with the signals that started it, indented."""
    pad = "  " * indent
    print(f"{pad}run {run.instance_id} of {_set(run.workflow_id)} ({_set(run.status)})")
    for s in _set(run.started_by) or []:
        print(f"{pad}  started by:")
        print_signal(s, indent + 2)
    for s in _set(run.unblocked_by) or []:
        print(f"{pad}  step {_set(s.step_id)} unblocked by:")
        print_signal(s, indent + 2)
    for s in _set(run.published) or []:
        print(f"{pad}  published:")
        print_signal(s, indent + 2)


async def cmd_signal_schema(args: argparse.Namespace, c: LegatoClient) -> int:
    """``legato signal schema``: set (or ``--remove``) the field types a signal name must have."""
    schema: dict[str, Any] | None = None
    if not args.remove:
        fields = {}
        for pair in args.field:
            key, sep, kind = pair.partition("=")
            if not sep:
                raise SystemExit(f"legato: --field expects NAME=TYPE, got {pair!r}")
            fields[key] = kind
        schema = {"required": [n for n in args.required.split(",") if n], "fields": fields}
    res = await c.set_signal_schema(args.name, schema)
    if args.json:
        render.dump_json(res)
    else:
        print(f"signal {res.name}: " + ("schema removed" if res.schema is None else "schema set"))
    return 0
