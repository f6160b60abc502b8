"""Typed param values and their JSON form.

JSON form (what travels in messages and sits in Postgres): dates ``"YYYY-MM-DD"``, datetimes ISO
8601 with their offset, durations a number of seconds (int when whole), sets and ranges lists.
:func:`coerce` turns a supplied value — typed, JSON, or CLI text — into a param's declared type.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from legato.core.model import ParamType
from legato.core.secrets import check_secret_name, secret_name_of, secret_ref
from legato.sel import DateRange, type_name
from legato.sel.durations import parse_duration_text
from legato.sel.lib_time import resolve_local

_MAX_DEPTH = 64
_MAX_LIST = 1_000_000  # a foreach may run a million iterations; a param list stays below that
_MAX_TEXT = 1_000_000


def to_json_value(value: Any) -> Any:
    """A SEL or param value in JSON form (see the module docstring); raises ValueError for host objects."""
    return _to_json(value, 0)


def _to_json(value: Any, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise ValueError("value nested too deeply for JSON")
    t = type(value)
    if value is None or t is bool or t is int or t is float or t is str:
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        return int(seconds) if seconds.is_integer() else seconds
    if isinstance(value, Mapping):
        return {
            k if type(k) is str else str(_to_json(k, depth + 1)): _to_json(v, depth + 1)
            for k, v in value.items()
        }
    if t in (list, tuple, range, DateRange):
        if len(value) > _MAX_LIST:
            raise ValueError(f"list of {len(value)} items is too long for JSON")
        return [_to_json(v, depth + 1) for v in value]
    if t in (set, frozenset):
        items = [_to_json(v, depth + 1) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return sorted(items, key=lambda v: (type(v).__name__, str(v)))
    raise ValueError(f"cannot write a {t.__name__} as JSON")


def from_json_value(value: Any, type: ParamType) -> Any:
    """A param value of declared ``type`` from its JSON form (or typed value); raises ValueError."""
    return coerce(value, type)


_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def _bad(type: str, value: Any, detail: str = "") -> ValueError:
    shown = (
        repr(value) if isinstance(value, (str, int, float)) and len(repr(value)) <= 60 else type_name(value)
    )
    return ValueError(f"expected {type}, got {shown}" + (f" ({detail})" if detail else ""))


def coerce(value: Any, type: ParamType) -> Any:
    """``value`` converted to ``type``; text is parsed (CLI ``k=v``, JSON strings); raises ValueError."""
    if isinstance(value, str) and len(value) > _MAX_TEXT:
        raise ValueError(f"text of {len(value)} characters is too long")
    converter = _COERCE.get(type)
    if converter is None:
        raise ValueError(f"unknown param type {type!r}")
    return converter(value)


def _string(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value) if isinstance(value, int) or not value.is_integer() else repr(value)
    if isinstance(value, date):
        return value.isoformat()
    raise _bad("a string", value)


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise _bad("an int", value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and len(value) <= 100:
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _bad("an int", value)


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise _bad("a float", value)
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:
            raise _bad("a float", value, "out of range") from None
    if isinstance(value, str) and len(value) <= 100:
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise _bad("a float", value)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    raise _bad("a bool (true/false)", value)


def _date(value: Any) -> date:
    if isinstance(value, datetime):
        raise _bad("a date", value, "convert a datetime with date(x, tz)")
    if isinstance(value, date):
        return value
    if isinstance(value, str) and len(value) <= 64:
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise _bad("a date (YYYY-MM-DD)", value)


def _datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and len(value) <= 64:
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise _bad("a datetime (ISO 8601)", value) from None
    else:
        raise _bad("a datetime (ISO 8601)", value)
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        return resolve_local(parsed, UTC)  # naive means UTC
    return parsed


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise _bad("a duration", value)
    try:
        if isinstance(value, (int, float)):
            if not math.isfinite(value):
                raise ValueError("not finite")
            return timedelta(seconds=value)
        if isinstance(value, str):
            return timedelta(seconds=parse_duration_text(value))
    except (ValueError, OverflowError) as exc:
        detail = "out of range" if "range" in str(exc) or isinstance(exc, OverflowError) else ""
        raise _bad("a duration (90s, 10m, 1h30m or seconds)", value, detail) from None
    raise _bad("a duration (90s, 10m, 1h30m or seconds)", value)


def _list(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple, range, DateRange)):
        if len(value) > _MAX_LIST:
            raise _bad("a list", value, f"more than {_MAX_LIST} items")
        return list(value)
    if isinstance(value, (set, frozenset)):
        return list(to_json_value(value))
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except (ValueError, RecursionError):
                raise _bad("a list", value, "invalid JSON array") from None
            if isinstance(parsed, list):
                return parsed
        if not text:
            return []
        return [part.strip() for part in text.split(",")]  # CLI: --param regions=eu,us
    raise _bad("a list", value)


def _map(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise _bad("a map", value, "keys must be strings")
        return dict(value)
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            raise _bad("a map (a JSON object)", value) from None
        if isinstance(parsed, dict):
            return parsed
    raise _bad("a map (a JSON object)", value)


def _secret(value: Any) -> dict[str, str]:
    # A secret param holds a reference to a named secret, never the secret: the executor resolves it.
    name = secret_name_of(value)
    if name is None:
        if not isinstance(value, str):
            raise _bad("a secret's name", value)
        name = value
    problem = check_secret_name(name)
    if problem is not None:
        raise ValueError(f"expected a secret's name: {problem}")
    return secret_ref(name)


_COERCE = {
    "string": _string,
    "secret": _secret,
    "int": _int,
    "float": _float,
    "bool": _bool,
    "date": _date,
    "datetime": _datetime,
    "duration": _duration,
    "list": _list,
    "map": _map,
}


def infer_param_type(value: Any) -> ParamType | None:
    """The param type of a bare literal default (``retries: 3`` is an int), or None."""
    name = type_name(value)
    return name if name in _COERCE else None  # type: ignore[return-value]  # the keys are the ParamType values
