"""Matching a signal's fields against ``match`` predicates (signal triggers and step signal waits)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from legato.core.model import MatchPredicate


def _comparable(a: Any, b: Any) -> bool:
    """Numbers compare with numbers and strings with strings; anything else never matches."""
    number = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    return (isinstance(a, number) and isinstance(b, number)) or (isinstance(a, str) and isinstance(b, str))


def _equal(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (list, dict)) or isinstance(b, (list, dict)):
        return bool(a == b)
    return _comparable(a, b) and bool(a == b)


def predicate_holds(predicate: MatchPredicate, value: Any) -> bool:
    """True when ``value`` (a signal field) satisfies ``predicate``; a type mismatch never matches."""
    op, expected = predicate.op, predicate.value
    if op == "=":
        return _equal(value, expected)
    if op == "!=":
        return not _equal(value, expected)
    if op == "in":
        return isinstance(expected, list) and any(_equal(value, option) for option in expected)
    if not _comparable(value, expected) or isinstance(value, bool):
        return False
    if op == ">":
        return bool(value > expected)
    if op == ">=":
        return bool(value >= expected)
    if op == "<":
        return bool(value < expected)
    return bool(value <= expected)


def signal_matches(match: Mapping[str, MatchPredicate], fields: Mapping[str, Any]) -> bool:
    """True when every predicate holds on the signal's fields (a missing field never matches)."""
    return all(name in fields and predicate_holds(pred, fields[name]) for name, pred in match.items())


# --- the optional signal-schema registry -----------------------------------------------------------

SCHEMA_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def schema_problem(schema: Mapping[str, Any]) -> str | None:
    """What is wrong with a declared signal schema (``{"required": [...], "fields": {name: type}}``)."""
    unknown = set(schema) - {"required", "fields"}
    if unknown:
        return f"schema: unknown keys {sorted(unknown)} (allowed: required, fields)"
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(n, str) for n in required):
        return "schema.required: must be a list of field names"
    fields = schema.get("fields", {})
    if not isinstance(fields, dict):
        return "schema.fields: must map field names to types"
    for name, kind in fields.items():
        if kind not in SCHEMA_TYPES:
            return f"schema.fields.{name}: must be one of {', '.join(SCHEMA_TYPES)}, got {kind!r}"
    return None


def schema_error(schema: Mapping[str, Any], fields: Mapping[str, Any]) -> str | None:
    """Why a signal's fields break its declared schema (a missing required field, a wrong type), or None."""
    for name in schema.get("required", []):
        if name not in fields:
            return f"{name}: required by the signal's schema"
    for name, kind in (schema.get("fields") or {}).items():
        if name not in fields or fields[name] is None:
            continue
        value = fields[name]
        if not isinstance(value, SCHEMA_TYPES.get(kind, ())) or (
            kind != "boolean" and isinstance(value, bool)
        ):
            return f"{name}: must be {kind}, got {type(value).__name__} {value!r}"[:500]
    return None
