"""Plain-text rendering for the CLI: aligned tables and short durations."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO, get_args

import msgspec

from legato.core.reasons import KnownReason, OtherReason, code_of, decode_reason, encode_reason, message_of
from legato.protocol.replies import reply_enc_hook

COLUMN_MAX = 80
_TYPED_REASONS = (*get_args(KnownReason), OtherReason)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO | None = None) -> None:
    """Aligned columns; a column wider than 80 is clipped, except the last, which is printed whole
    (it holds the why / error text, whose run ids and paths must not be cut off)."""
    out = out or sys.stdout
    cells = [[("" if v is None else str(v)).replace("\n", " ") for v in row] for row in rows]
    widths = [len(h) for h in headers]
    last = len(headers) - 1
    for row in cells:
        for i, v in enumerate(row):
            widths[i] = max(widths[i], len(v)) if i == last else min(max(widths[i], len(v)), COLUMN_MAX)
    line = "  ".join(h.upper().ljust(widths[i]) for i, h in enumerate(headers))
    print(line.rstrip(), file=out)
    for row in cells:
        print(
            "  ".join(
                (v if i == last else _clip(v, widths[i])).ljust(widths[i]) for i, v in enumerate(row)
            ).rstrip(),
            file=out,
        )


def _clip(v: str, width: int) -> str:
    return v if len(v) <= width else v[: width - 1] + "…"


def plain(value: Any) -> Any:
    """``value`` with every typed reply in it as the JSON values it came as (lists and dicts walked)."""
    if isinstance(value, msgspec.Struct):
        return msgspec.to_builtins(value, enc_hook=reply_enc_hook)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def dump_json(value: Any, out: TextIO | None = None) -> None:
    """Print ``value`` as indented, key-sorted JSON (``--json`` output); typed replies print as the JSON
    they came as."""
    print(json.dumps(plain(value), indent=2, sort_keys=True, default=str), file=out or sys.stdout)


def parse_time(value: str | None) -> datetime | None:
    """An ISO time from an API reply; None when absent."""
    if not value:
        return None
    return datetime.fromisoformat(value)


def duration(start: str | None, end: str | None) -> str:
    """Time between two ISO times, shortly (``1.2s``, ``3m04s``); ``…`` while still running."""
    a, b = parse_time(start), parse_time(end)
    if a is None:
        return ""
    if b is None:
        return "…"
    secs = (b - a).total_seconds()
    if secs < 1:
        return f"{secs * 1000:.0f}ms"
    if secs < 120:
        return f"{secs:.1f}s"
    if secs < 7200:
        return f"{secs / 60:.1f}m"
    return f"{secs / 3600:.1f}h"


def short_time(value: str | None) -> str:
    """An ISO time as ``YYYY-MM-DD HH:MM:SS``; empty when absent."""
    t = parse_time(value)
    return t.strftime("%Y-%m-%d %H:%M:%S") if t else ""


def reason_text(reason: object) -> str:
    """Why a run or step waits, was skipped or stopped, in words (a reason's message, or its code and
    fields), from a reason as a reply carries it (decoded here once, whatever version wrote it)."""
    decoded = reason if isinstance(reason, _TYPED_REASONS) else decode_reason(reason) if reason else None
    if decoded is None:
        return ""
    message = message_of(decoded)
    if message:
        return message
    code = code_of(decoded) or ""
    fields = encode_reason(decoded) or {}
    rest = ", ".join(
        f"{k}={v}" for k, v in fields.items() if k not in ("code", "message") and v not in (None, "")
    )
    return f"{code} ({rest})" if rest else code


def compact_json(value: Any) -> str:
    """One-line JSON for a table cell (``""`` for null)."""
    return "" if value is None else json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)
