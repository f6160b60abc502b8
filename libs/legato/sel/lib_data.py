"""Library: conversions, collections (lists, maps, sets, ranges), JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from legato.sel.errors import SelEvalError, SelLimitError
from legato.sel.lib_registry import fail, library, want_bool, want_int, want_str
from legato.sel.runtime import Ctx
from legato.sel.values import (
    HASHABLE_TYPES,
    SEQUENCE_TYPES,
    SET_TYPES,
    DateRange,
    a_type,
    check_hashable,
    equal,
    from_json_data,
    instant,
    is_map,
    is_sequence,
    iterate,
    order_kind,
    size_of,
    sort_values,
    to_json_text,
    to_text,
    type_name,
)

_MAX_NUMBER_TEXT = 2_000  # digits accepted by int()/float() from text; more is never a real number


def _items(value: Any, fn: str, ctx: Ctx) -> Sequence[Any]:
    """The items of a list-like argument (sets sorted, maps as keys, strings as characters), paid for."""
    if type(value) is str or is_map(value):
        raise fail(fn, f"expected a list, got {type_name(value)}")
    try:
        items = iterate(value, ctx)
    except SelEvalError:
        raise fail(fn, f"expected a list, got {type_name(value)}") from None
    ctx.charge(size_of(items))
    return items  # type: ignore[return-value]


def _materialise(items: Any, ctx: Ctx) -> list[Any]:
    ctx.check_collection(size_of(items))
    return list(items)


# ---------------------------------------------------------------------------- conversions


@library("len", methods=())
def len_(ctx: Ctx, value: Any) -> int:
    """Number of characters of a string, or items of a list, map, set or range."""
    t = type(value)
    if t is str or t in SEQUENCE_TYPES or t in SET_TYPES or is_map(value):
        try:
            return len(value)
        except OverflowError:
            raise fail("len", "range too long to count") from None
    raise fail("len", f"{a_type(value)} has no length")


@library("str")
def str_(ctx: Ctx, value: Any) -> str:
    """Text of a value: true/false/null, ISO dates, "1h30m" durations, JSON for lists and maps."""
    text = to_text(value, ctx)
    ctx.check_string(len(text))
    return text


@library("int")
def int_(ctx: Ctx, value: Any, base: int = 10) -> int:
    """An int from a number (truncated), a bool, or text (in ``base``, 2..36)."""
    t = type(value)
    if t is int:
        return value  # type: ignore[no-any-return]
    if t is bool:
        return int(value)
    if t is float:
        if not math.isfinite(value):
            raise fail("int", f"cannot convert {value!r} to int")
        return ctx.check_int(int(value))
    if t is str:
        want_int(base, "int", "base")
        if not 2 <= base <= 36:
            raise fail("int", "base must be between 2 and 36")
        if len(value) > _MAX_NUMBER_TEXT:
            raise SelLimitError(
                f"int(): text of {len(value)} characters is too long for a number", limit="max_int_bits"
            )
        try:
            return ctx.check_int(int(value.strip(), base))
        except ValueError:
            raise fail("int", f"invalid int {value[:40]!r}") from None
    raise fail("int", f"cannot convert {a_type(value)} to int")


@library("float")
def float_(ctx: Ctx, value: Any) -> float:
    """A float from a number or text (``"1.5"``, ``"1e3"``, ``"inf"``)."""
    t = type(value)
    if t is float:
        return value  # type: ignore[no-any-return]
    if t is int or t is bool:
        try:
            return float(value)
        except OverflowError:
            raise fail("float", "int too large to convert to float") from None
    if t is str:
        if len(value) > _MAX_NUMBER_TEXT:
            raise fail("float", "text too long for a number")
        try:
            return float(value.strip())
        except ValueError:
            raise fail("float", f"invalid float {value[:40]!r}") from None
    raise fail("float", f"cannot convert {a_type(value)} to float")


_TRUE_TEXT = frozenset({"true", "yes", "on", "1"})
_FALSE_TEXT = frozenset({"false", "no", "off", "0", ""})


@library("bool")
def bool_(ctx: Ctx, value: Any) -> bool:
    """Truth of a value; text must spell it (true/false, yes/no, on/off, 1/0) — ``bool("false")`` is false."""
    if type(value) is str:
        low = value.strip().lower()
        if low in _TRUE_TEXT:
            return True
        if low in _FALSE_TEXT:
            return False
        raise fail("bool", f"invalid bool {value[:40]!r}")
    return truthy(value)


def truthy(value: Any) -> bool:
    """Python truth for SEL values; a host object is never asked (its ``__bool__`` could be anything)."""
    t = type(value)
    if value is None:
        return False
    if t is bool:
        return value  # type: ignore[no-any-return]
    if t in (int, float, str, list, tuple, dict, set, frozenset, range, DateRange, timedelta):
        try:
            return bool(value)
        except OverflowError:  # a range longer than sys.maxsize is not empty
            return True
    if is_map(value):
        return len(value) > 0
    return True


@library("type")
def type_(ctx: Ctx, value: Any) -> str:
    """The SEL type name: null, bool, int, float, string, list, map, set, range, date, datetime, duration."""
    return type_name(value)


@library("list")
def list_(ctx: Ctx, value: Any = None) -> list[Any]:
    """A list of the items of a list, range, set (sorted), map (keys) or string (characters)."""
    if value is None:
        return []
    try:
        items = iterate(value, ctx)
    except SelEvalError:
        raise fail("list", f"cannot make a list from {a_type(value)}") from None
    return _materialise(items, ctx)


@library("set")
def set_(ctx: Ctx, value: Any = None) -> set[Any]:
    """A set of the items of a list, range, set or string; items must be scalars."""
    if value is None:
        return set()
    try:
        items = iterate(value, ctx)
    except SelEvalError:
        raise fail("set", f"cannot make a set from {a_type(value)}") from None
    ctx.check_collection(size_of(items))
    for item in items:
        check_hashable(item, "a set item")
    return set(items)


@library("dict")
def dict_(ctx: Ctx, pairs: Any = None) -> dict[str, Any]:
    """A map from a list of ``[key, value]`` pairs (or a copy of a map)."""
    if pairs is None:
        return {}
    if is_map(pairs):
        ctx.check_collection(len(pairs))
        return dict(pairs)
    items = _items(pairs, "dict", ctx)
    ctx.check_collection(len(items))
    out: dict[str, Any] = {}
    for pair in items:
        if not is_sequence(pair) or len(pair) != 2:
            raise fail("dict", f"expected [key, value] pairs, got {type_name(pair)}")
        key = pair[0]
        if type(key) is not str:
            raise fail("dict", f"map keys must be strings, got {type_name(key)}")
        out[key] = pair[1]
    return out


# ---------------------------------------------------------------------------- ranges


@library("range")
def range_(ctx: Ctx, start: int, stop: int | None = None, step: int = 1) -> range:
    """A lazy range of ints, like Python's: ``range(5)``, ``range(1, 10, 2)``."""
    if stop is None:
        start, stop = 0, start
    for arg, name in ((start, "start"), (stop, "stop"), (step, "step")):
        ctx.check_int(want_int(arg, "range", name))
    if step == 0:
        raise fail("range", "step must not be zero")
    return range(start, stop, step)


# ---------------------------------------------------------------------------- list helpers


@library("sorted")
def sorted_(ctx: Ctx, items: Any, reverse: bool = False) -> list[Any]:
    """Items sorted; all numbers, all strings, all dates, all datetimes or all durations."""
    want_bool(reverse, "sorted", "reverse")
    values = _materialise(_items(items, "sorted", ctx), ctx)
    return sort_values(values, ctx, reverse=reverse)


@library("sort_by")
def sort_by(ctx: Ctx, items: Any, key: str, reverse: bool = False) -> list[Any]:
    """Maps sorted by the value under ``key`` (stable); ``sort_by(rows, "date")``."""
    want_str(key, "sort_by", "key")
    want_bool(reverse, "sort_by", "reverse")
    values = _materialise(_items(items, "sort_by", ctx), ctx)
    keys = []
    for value in values:
        if not is_map(value) or key not in value:
            raise fail("sort_by", f"every item must be a map with the key {key!r}")
        keys.append(value[key])
    kinds = {order_kind(k) for k in keys}
    if None in kinds or len(kinds) > 1:
        raise fail("sort_by", f"values under {key!r} must all be numbers, strings, dates or durations")
    ctx.charge(len(keys) * max(1, len(keys).bit_length()))
    order = sorted(range(len(values)), key=keys.__getitem__, reverse=reverse)
    return [values[i] for i in order]


@library("reversed")
def reversed_(ctx: Ctx, items: Any) -> Any:
    """Items in reverse order (ranges stay lazy)."""
    if type(items) is range or type(items) is DateRange:
        return items[::-1]
    if type(items) is str:
        ctx.check_string(len(items))
        return items[::-1]
    values = _items(items, "reversed", ctx)
    ctx.check_collection(len(values))
    return list(reversed(values))


def _numbers_or_durations(values: Sequence[Any], fn: str) -> str:
    kinds = {order_kind(v) for v in values}
    if kinds <= {"number"}:
        return "number"
    if kinds == {"duration"}:
        return "duration"
    raise fail(fn, "items must all be numbers or all durations")


@library("sum")
def sum_(ctx: Ctx, items: Any, start: Any = 0) -> Any:
    """Sum of numbers or of durations."""
    values = _items(items, "sum", ctx)
    if type(items) is range and type(start) is int:
        n = len(values)
        total = start + (values[0] + values[-1]) * n // 2 if n else start
        return ctx.check_int(total) if type(total) is int else total
    kind = _numbers_or_durations(values, "sum")
    if kind == "duration" and start == 0:
        start = timedelta(0)
    try:
        total = sum(values, start)
    except (TypeError, OverflowError) as exc:
        raise fail("sum", str(exc)) from None
    return ctx.check_int(total) if type(total) is int else total


def _extreme(ctx: Ctx, fn: str, args: tuple[Any, ...], pick: Any) -> Any:
    if not args:
        raise fail(fn, "expected at least one argument")
    values: Sequence[Any] = args
    if len(args) == 1:
        values = _items(args[0], fn, ctx)
        if not len(values):
            raise fail(fn, "empty list")
        if type(values) is range:
            return pick(values[0], values[-1])  # a range is monotonic: its ends are its extremes
    ctx.charge(len(values))
    kinds = {order_kind(v) for v in values}
    if None in kinds or len(kinds) != 1:
        raise fail(fn, "items must all be numbers, strings, dates, datetimes or durations")
    return pick(values, key=instant)


@library("min")
def min_(ctx: Ctx, *args: Any) -> Any:
    """Smallest of a list, or of several arguments."""
    return _extreme(ctx, "min", args, min)


@library("max")
def max_(ctx: Ctx, *args: Any) -> Any:
    """Largest of a list, or of several arguments."""
    return _extreme(ctx, "max", args, max)


@library("any")
def any_(ctx: Ctx, items: Any) -> bool:
    """True when some item is true."""
    return any(truthy(v) for v in _items(items, "any", ctx))


@library("all")
def all_(ctx: Ctx, items: Any) -> bool:
    """True when every item is true."""
    return all(truthy(v) for v in _items(items, "all", ctx))


@library("unique")
def unique(ctx: Ctx, items: Any) -> list[Any]:
    """Items without repeats, first occurrence kept (scalars only)."""
    values = _items(items, "unique", ctx)
    seen: set[Any] = set()
    out = []
    for v in values:
        check_hashable(v, "a unique() item")
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


@library("flatten")
def flatten(ctx: Ctx, items: Any) -> list[Any]:
    """One level of nesting removed: ``flatten([[1, 2], [3]]) == [1, 2, 3]``."""
    out: list[Any] = []
    for inner in _items(items, "flatten", ctx):
        if is_sequence(inner) or type(inner) in SET_TYPES:
            part = _items(inner, "flatten", ctx)
            ctx.check_collection(len(out) + len(part))
            out.extend(part)
        else:
            ctx.check_collection(len(out) + 1)
            out.append(inner)
    return out


@library("zip")
def zip_(ctx: Ctx, *lists: Any) -> list[tuple[Any, ...]]:
    """Lists of items taken pairwise: ``zip([1, 2], ["a", "b"]) == [[1, "a"], [2, "b"]]``."""
    seqs = [_items(x, "zip", ctx) for x in lists]
    n = min((len(s) for s in seqs), default=0)
    ctx.check_collection(n)
    ctx.charge(n * len(seqs))
    return list(zip(*(s[:n] for s in seqs), strict=True))


@library("enumerate")
def enumerate_(ctx: Ctx, items: Any, start: int = 0) -> list[tuple[int, Any]]:
    """``[index, item]`` pairs."""
    want_int(start, "enumerate", "start")
    values = _items(items, "enumerate", ctx)
    ctx.check_collection(len(values))
    return list(enumerate(values, ctx.check_int(start)))


@library("chunk")
def chunk(ctx: Ctx, items: Any, size: int) -> list[list[Any]]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    if want_int(size, "chunk", "size") < 1:
        raise fail("chunk", "size must be >= 1")
    values = _items(items, "chunk", ctx)
    ctx.check_collection(len(values))
    return [list(values[i : i + size]) for i in range(0, len(values), size)]


@library("first")
def first(ctx: Ctx, items: Any, default: Any = None) -> Any:
    """The first item, or ``default`` when empty."""
    values = iterate(items, ctx) if not is_map(items) and type(items) is not str else None
    if values is None:
        raise fail("first", f"expected a list, got {type_name(items)}")
    return values[0] if len(values) else default


@library("last")
def last(ctx: Ctx, items: Any, default: Any = None) -> Any:
    """The last item, or ``default`` when empty."""
    values = iterate(items, ctx) if not is_map(items) and type(items) is not str else None
    if values is None:
        raise fail("last", f"expected a list, got {type_name(items)}")
    return values[-1] if len(values) else default


@library("coalesce")
def coalesce(ctx: Ctx, *values: Any) -> Any:
    """The first argument that is not null (null when all are)."""
    for v in values:
        if v is not None:
            return v
    return None


# ---------------------------------------------------------------------------- list and string methods shared


@library("count", methods=("list", "range", "string"))
def count(ctx: Ctx, container: Any, item: Any) -> int:
    """How many times ``item`` occurs in a list (or a substring in a string)."""
    if type(container) is str:
        ctx.charge_chars(len(container))
        return container.count(want_str(item, "count", "substring"))
    values = _items(container, "count", ctx)
    return sum(1 for v in values if equal(v, item, ctx, 1))


@library("index", methods=("list", "range", "string"))
def index(ctx: Ctx, container: Any, item: Any) -> int:
    """Position of the first ``item`` in a list (or substring in a string); an error when absent."""
    if type(container) is str:
        ctx.charge_chars(len(container))
        pos = container.find(want_str(item, "index", "substring"))
        if pos < 0:
            raise fail("index", f"substring {item[:40]!r} not found")
        return pos
    values = _items(container, "index", ctx)
    for i, v in enumerate(values):
        if equal(v, item, ctx, 1):
            return i
    raise fail("index", "item not found")


# ---------------------------------------------------------------------------- maps


def _want_map(value: Any, fn: str) -> Mapping[Any, Any]:
    if not is_map(value):
        raise fail(fn, f"expected a map, got {type_name(value)}")
    return value  # type: ignore[no-any-return]


@library("keys", methods=("map",))
def keys(ctx: Ctx, mapping: Any) -> list[Any]:
    """The keys of a map, in order."""
    m = _want_map(mapping, "keys")
    ctx.check_collection(len(m))
    return list(m)


@library("values", methods=("map",))
def values(ctx: Ctx, mapping: Any) -> list[Any]:
    """The values of a map, in key order."""
    m = _want_map(mapping, "values")
    ctx.check_collection(len(m))
    return list(m.values())


@library("items", methods=("map",))
def items(ctx: Ctx, mapping: Any) -> list[tuple[Any, Any]]:
    """``[key, value]`` pairs of a map: ``{k: v * 2 for k, v in items(m)}``."""
    m = _want_map(mapping, "items")
    ctx.check_collection(len(m))
    return list(m.items())


@library("get", methods=("map", "list", "range"))
def get(ctx: Ctx, container: Any, key: Any, default: Any = None) -> Any:
    """``container[key]`` for a map key or a list index, or ``default`` when it is missing."""
    if is_map(container):
        if type(key) not in HASHABLE_TYPES:
            return default
        return container.get(key, default)
    if is_sequence(container):
        if type(key) is not int:
            raise fail("get", f"a list index must be an int, got {type_name(key)}")
        try:
            return container[key]
        except IndexError:
            return default
    raise fail("get", f"expected a map or a list, got {type_name(container)}")


@library("has")
def has(ctx: Ctx, container: Any, key: Any) -> bool:
    """True when a map has ``key``, a list has index ``key``, or a set holds ``key``."""
    if is_map(container):
        return type(key) in HASHABLE_TYPES and key in container
    if is_sequence(container):
        if type(key) is not int:
            raise fail("has", f"a list index must be an int, got {type_name(key)}")
        return -len(container) <= key < len(container)
    if type(container) in SET_TYPES:
        return type(key) in HASHABLE_TYPES and key in container
    raise fail("has", f"expected a map, list or set, got {type_name(container)}")


@library("merge")
def merge(ctx: Ctx, *maps: Any) -> dict[Any, Any]:
    """Maps merged left to right (later keys win); ``merge(defaults, overrides)``."""
    out: dict[Any, Any] = {}
    for m in maps:
        _want_map(m, "merge")
        ctx.check_collection(len(out) + len(m))
        out.update(m)
    return out


# ---------------------------------------------------------------------------- JSON


@library("json")
def json_(ctx: Ctx, value: Any, indent: int | None = None) -> str:
    """JSON text of a value (compact, or indented by ``indent`` spaces)."""
    if indent is not None and not 0 <= want_int(indent, "json", "indent") <= 8:
        raise fail("json", "indent must be between 0 and 8")
    return to_json_text(value, ctx, indent=indent)


@library("parse_json")
def parse_json(ctx: Ctx, text: Any) -> Any:
    """The value in a JSON text."""
    want_str(text, "parse_json", "text")
    ctx.charge_chars(len(text) * 4)  # decoding costs more than a copy: objects are built
    try:
        data = json.loads(text)
    except RecursionError:
        raise SelLimitError("parse_json(): JSON nested too deeply", limit="max_depth") from None
    except ValueError as exc:
        raise fail("parse_json", f"invalid JSON: {str(exc)[:120]}") from None
    _check_ints(data, ctx, 0)
    return from_json_data(data, ctx)


def _check_ints(data: Any, ctx: Ctx, depth: int) -> None:
    t = type(data)
    if t is int:
        ctx.check_int(data)
    elif t is list or t is dict:
        ctx.check_depth(depth + 1)
        for item in data if t is list else data.values():
            if type(item) in (int, list, dict):
                _check_ints(item, ctx, depth + 1)
