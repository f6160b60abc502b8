"""Replies that always fit in one NATS message: a byte budget read from the server's ``max_payload``,
pages cut to that budget, and large fields replaced by a marker (fetched separately).

A reply over the server's max payload is never sent (the client would wait out its timeout): lists stop
adding rows when the budget is spent and say where to go on (``next``/``next_cursor``), single large
fields are truncated with a marker: text keeps its start followed by ``…[truncated: N bytes]``,
structured values become ``{"truncated": true, "bytes": N, "preview": …}``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
DEFAULT_MAX_PAYLOAD = 1024 * 1024
ENVELOPE_RESERVE = 8 * 1024  # {"result": …}, the page's own fields, headers
FIELD_LIMIT = 64 * 1024  # one field of one row of a list (params, outputs, description, raw)
PREVIEW_CHARS = 200
TRUNCATED_MARK = "…[truncated: "


def max_payload(nc: Any) -> int:
    """The server's max payload (from the connection's INFO), or NATS's default when unknown."""
    value = getattr(nc, "max_payload", None)
    return int(value) if isinstance(value, int) and value > 0 else DEFAULT_MAX_PAYLOAD


def reply_budget(nc: Any) -> int:
    return max(4096, max_payload(nc) - ENVELOPE_RESERVE)


def size_of(value: Any) -> int:
    return len(_encoder.encode(value))


def truncated(value: Any, limit: int = FIELD_LIMIT) -> Any:
    """``value`` when its JSON fits in ``limit`` bytes, else its start with a marker and its full size."""
    if value is None or isinstance(value, bool | int | float):
        return value
    encoded = _encoder.encode(value)
    if len(encoded) <= limit:
        return value
    if isinstance(value, str):
        # Text stays text (callers print it): its start, and a marker saying how much is missing.
        keep = value[: max(PREVIEW_CHARS, limit // 8)]
        return f"{keep}{TRUNCATED_MARK}{len(value.encode())} bytes]"
    return structured_marker(len(encoded), encoded.decode(errors="replace")[:PREVIEW_CHARS])


def structured_marker(total_bytes: int, start: str) -> dict[str, Any]:
    """What a structured value too large for its field shows: its size and the start of its JSON."""
    return {"truncated": True, "bytes": total_bytes, "preview": start}


def cut_text(text: str | None, total_bytes: int | None, keep: int) -> str | None:
    """The first ``keep`` characters of a text whose full size is ``total_bytes``, with the marker when
    cut (for texts cut in SQL, so the whole never leaves the database)."""
    if text is None or total_bytes is None or (len(text) <= keep and len(text.encode()) >= total_bytes):
        return text
    return f"{text[:keep]}{TRUNCATED_MARK}{total_bytes} bytes]"


def fit(items: Sequence[T], budget: int, render: Callable[[T], dict[str, Any]]) -> list[dict[str, Any]]:
    """Render items in order while their JSON fits in ``budget`` bytes (at least one, already made to
    fit by the caller's truncation): the caller's cursor goes on after the last one returned."""
    out: list[dict[str, Any]] = []
    used = 0
    for item in items:
        row = render(item)
        size = size_of(row) + 1
        if out and used + size > budget:
            break
        out.append(row)
        used += size
    return out


# A jsonb value stored in more than this many bytes (compressed or not) is measured in Postgres before
# it is sent: its JSON text once, its size and its start taken from it, and the value itself sent only
# when that text could fit the field's limit. A foreach's outputs hold every iteration's (1.7 MB of
# JSON for 100,000 noop iterations, 40 KB stored): decoding and re-encoding that to cut it took ~50 ms.
STORED_SMALL = 4096


def capped(table: str, column: str, limit: int) -> tuple[str, str]:
    """The select list and the join that send ``table.column`` (a jsonb) only when its JSON text is at
    most 1.5 times ``limit`` bytes, else NULL with ``<column>_bytes`` and ``<column>_start`` (see
    ``shown``). Postgres's text puts a space after each ``,`` and ``:``, so the compact JSON the reply
    holds is at least two thirds of it (an array of one-digit numbers, ``1, 1``; numbers Postgres writes
    out in full, ``1e100``, aside); a value sent is cut, or not, exactly by ``truncated``. The text is
    made once, and only for a value stored in more than STORED_SMALL."""
    big = f"{column}_big"
    select = (
        f"CASE WHEN {big}.n IS NULL OR {big}.n <= {limit * 3 // 2} THEN {table}.{column} END AS {column}, "
        f"{big}.n AS {column}_bytes, left({big}.t, {PREVIEW_CHARS}) AS {column}_start"
    )
    value = f"{table}.{column}"
    join = (
        f"LEFT JOIN LATERAL (SELECT t, octet_length(t) AS n FROM (SELECT {value}::text AS t "
        f"WHERE pg_column_size({value}) > {STORED_SMALL} OFFSET 0) AS x) AS {big} ON true"
    )
    return select, join


def shown(r: Mapping[str, Any], column: str, limit: int) -> Any:
    """A column selected through ``capped``, as a reply shows it (``truncated``'s forms)."""
    value = r[column]
    if value is None and r[f"{column}_bytes"] is not None:
        return structured_marker(r[f"{column}_bytes"], r[f"{column}_start"])
    return truncated(value, limit)
