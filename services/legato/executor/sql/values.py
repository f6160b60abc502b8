"""JSON values in and out of SQL: arguments converted to the type a placeholder expects, rows to JSON."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from legato.protocol.messages import JSONValue

_INTS = frozenset({"int2", "int4", "int8", "oid"})
_FLOATS = frozenset({"float4", "float8"})
_TEXTS = frozenset({"text", "varchar", "bpchar", "name", "char"})


def bind_value(pg_type: str, value: JSONValue) -> Any:
    """``value`` (from a definition or params, so JSON) as the Python value asyncpg binds for ``pg_type``.

    Dates and times arrive as ISO text, numbers as JSON numbers or text; a value that does not fit
    raises ``ValueError`` naming the type.
    """
    if value is None:
        return None
    if pg_type in ("json", "jsonb"):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, str):
        if pg_type in _INTS:
            return int(value)
        if pg_type in _FLOATS:
            return float(value)
        if pg_type == "numeric":
            return Decimal(value)
        if pg_type == "date":
            return date.fromisoformat(value)
        if pg_type in ("timestamp", "timestamptz"):
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        if pg_type == "time":
            return time.fromisoformat(value)
        if pg_type == "uuid":
            return uuid.UUID(value)
        if pg_type == "bool":
            if value.lower() not in ("true", "false"):
                raise ValueError(f"expected true or false, got {value!r}")
            return value.lower() == "true"
        return value
    if isinstance(value, bool):
        return str(value).lower() if pg_type in _TEXTS else value
    if isinstance(value, int | float):
        if pg_type in _INTS:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"expected an integer, got {value!r}")
            return int(value)
        if pg_type in _FLOATS:
            return float(value)
        if pg_type == "numeric":
            return Decimal(str(value))
        if pg_type == "interval":
            return timedelta(seconds=value)
        if pg_type in _TEXTS:
            return str(value)
        return value
    if isinstance(value, list):
        if pg_type.startswith("_"):  # an array type: _int4, _text, ...
            return [bind_value(pg_type[1:], v) for v in value]
        return value
    return value


def json_cell(value: Any) -> JSONValue:
    """A column value as JSON: dates and times as ISO text, decimals as text (exact), bytes as base64."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, list | tuple):
        return [json_cell(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_cell(v) for k, v in value.items()}
    return str(value)


def rows_affected(status: str) -> int:
    """The row count of a command tag (``INSERT 0 3`` -> 3, ``UPDATE 2`` -> 2, ``CREATE TABLE`` -> 0)."""
    last = status.rsplit(" ", 1)[-1]
    if not last.isdigit():
        return 0
    verb = status.split(" ", 1)[0].upper()
    return int(last) if verb in ("INSERT", "UPDATE", "DELETE", "MERGE", "COPY") else 0
