"""``legato dead-letters list|show|replay|discard``: the messages consumers gave up on, through the API."""

from __future__ import annotations

import argparse
import asyncio
import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

from legato.cli import render
from legato.client import LegatoClient
from legato.protocol.replies import DeadLetterDetail, DeadLetterInfo, DeadLetterPage

ApiParser = Callable[..., argparse.ArgumentParser]
MAX_LIST = 100_000  # rows `list --limit` will page through at most


def add_dead_letter_commands(sub: Any, api: ApiParser) -> None:
    """Register ``legato dead-letters …`` under the top-level subparsers (``api`` adds ``--json``)."""
    dl = sub.add_parser(
        "dead-letters", help="messages that could not be processed: list, show, replay, discard"
    )
    dsub = dl.add_subparsers(dest="dead_letter_command", required=True, metavar="ACTION")
    sp = api(
        "list", cmd_dead_letters_list, "dead letters, newest first (not yet replayed or discarded)", dsub
    )
    sp.add_argument("--all", action="store_true", help="replayed and discarded ones too")
    sp.add_argument("--limit", type=int, default=50)
    sp = api("show", cmd_dead_letter_show, "one dead letter: raw message, headers, error, deliveries", dsub)
    sp.add_argument("id", type=int)
    sp.add_argument("--raw", metavar="FILE", help="write the whole raw message to FILE (any size)")
    sp = api("replay", cmd_dead_letter_replay, "publish the message again to its subject (once)", dsub)
    sp.add_argument("id", type=int)
    sp.add_argument("--reason", default="", help="why (logged with the actor)")
    sp = api("discard", cmd_dead_letter_discard, "mark a dead letter as handled without replaying it", dsub)
    sp.add_argument("id", type=int)
    sp.add_argument("--reason", default="", help="why (logged with the actor)")


async def cmd_dead_letters_list(args: argparse.Namespace, c: LegatoClient) -> int:
    """``legato dead-letters list``: the newest dead letters, paged up to ``--limit``."""
    limit = max(1, min(args.limit, MAX_LIST))
    rows: list[DeadLetterInfo] = []
    before: int | None = None
    while len(rows) < limit:  # bounded: every page returns at least one row or ends
        res = await c.list_dead_letters(
            limit=min(1000, limit - len(rows)), before=before, include_done=args.all
        )
        rows.extend(res.dead_letters)
        before = res.next
        if before is None or not res.dead_letters:
            break
    if args.json:
        render.dump_json(DeadLetterPage(dead_letters=rows, next=before))
        return 0
    render.table(
        ["id", "created", "consumer", "subject", "deliveries", "state", "error"],
        [
            [
                d.id,
                render.short_time(d.created_at),
                d.consumer,
                d.subject,
                d.deliveries,
                _state(d),
                d.error if isinstance(d.error, str) else render.compact_json(d.error),
            ]
            for d in rows
        ],
    )
    return 0


def _state(d: DeadLetterInfo) -> str:
    if d.discarded_at:
        return "discarded"
    if d.replayed_at:
        return "replayed"
    return "open"


async def cmd_dead_letter_show(args: argparse.Namespace, c: LegatoClient) -> int:
    """``legato dead-letters show``: one dead letter, or (``--raw``) its payload written to a file."""
    d = await c.get_dead_letter(args.id)
    if args.raw:
        return await _write_raw(c, d, args.raw)
    if args.json:
        render.dump_json(d)
        return 0
    print(f"dead letter {d.id}  ({_state(d)})")
    print(f"  stream      {d.stream} seq {d.stream_seq}  consumer {d.consumer}")
    print(f"  subject     {d.subject}")
    print(f"  msg id      {d.msg_id}")
    print(f"  deliveries  {d.deliveries}  at {render.short_time(d.created_at)}")
    if d.replayed_at:
        print(f"  replayed    {render.short_time(d.replayed_at)} by {d.replayed_by or '?'}")
    if d.discarded_at:
        print(f"  discarded   {render.short_time(d.discarded_at)} by {d.discarded_by or '?'}")
    print(f"  error       {d.error}")
    print("  headers")
    headers = d.headers if isinstance(d.headers, dict) else {}
    for k, v in sorted(headers.items()):
        print(f"    {k}: {v}")
    payload = d.payload or ""
    if d.payload_encoding == "base64":
        raw = base64.b64decode(payload)
        payload = raw.decode(errors="backslashreplace")
    cut = f" (first part of {d.payload_bytes} bytes)" if d.payload_truncated else ""
    print(f"  message{cut}")
    print("    " + payload)
    return 0


async def _write_raw(c: LegatoClient, first: DeadLetterDetail, path: str) -> int:
    """The whole message, part by part (a message near the max payload does not fit in one reply)."""
    d = first
    parts: list[bytes] = []
    for _ in range(100_000):  # bounded: every part holds at least one byte
        if d.payload_encoding == "utf-8":
            parts.append((d.payload or "").encode())
        else:
            parts.append(base64.b64decode(d.payload or ""))
        nxt = d.payload_next_offset
        if nxt is None:
            break
        d = await c.get_dead_letter(first.id, payload_offset=nxt)
    await asyncio.to_thread(Path(path).write_bytes, b"".join(parts))
    print(f"dead letter {first.id}: {first.payload_bytes} bytes written to {path}")
    return 0


async def cmd_dead_letter_replay(args: argparse.Namespace, c: LegatoClient) -> int:
    """``legato dead-letters replay``: publish a dead letter again to its subject."""
    d = await c.replay_dead_letter(args.id, reason=args.reason)
    if args.json:
        render.dump_json(d)
    elif d.replayed:
        print(f"dead letter {d.id} replayed to {d.subject}")
    else:
        print(
            f"dead letter {d.id} was already replayed at {render.short_time(d.replayed_at)}: not sent again"
        )
    return 0


async def cmd_dead_letter_discard(args: argparse.Namespace, c: LegatoClient) -> int:
    """``legato dead-letters discard``: mark a dead letter as handled without replaying it."""
    d = await c.discard_dead_letter(args.id, reason=args.reason)
    if args.json:
        render.dump_json(d)
    else:
        print(f"dead letter {d.id} discarded")
    return 0
