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
