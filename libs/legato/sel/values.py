"""SEL values and the operations on them that must stay bounded: text, JSON, equality, ordering.

SEL values are None, bool, int, float, str, list (tuples read as lists), map (dict), set, date,
datetime (always time-zone aware), duration (timedelta), and two lazy sequences: ``range`` and
:class:`DateRange`. Python's own ``==``, ``<``, ``str()`` on containers run in C without any
budget (``[[0]*1000]*1000 == [[0]*1000]*1000`` does a million comparisons), so containers go
through the walkers here, which pay for every element they visit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, overload

from legato.sel.durations import format_duration
from legato.sel.errors import SelEvalError
from legato.sel.runtime import Ctx

NoneType = type(None)
SCALAR_TYPES: frozenset[type] = frozenset({NoneType, bool, int, float, str, date, datetime, timedelta})
HASHABLE_TYPES = SCALAR_TYPES
NUMBER_TYPES: frozenset[type] = frozenset({int, float, bool})
_FLAT_TYPES: frozenset[type] = frozenset({NoneType, bool, int, float, date, timedelta})  # constant-time ==


class DateRange(Sequence[Any]):
    """A lazy, immutable sequence of dates (or aware datetimes): ``start, start+step, ...``.

    Built by ``date_range(start, end, step)``; the end is *inclusive*. Datetime steps are exact
    elapsed time (computed in UTC, shown in the start's zone). Never materialised unless asked.
    """

    __slots__ = ("_length", "start", "step")

    def __init__(self, start: date, step: timedelta, length: int) -> None:
        self.start = start
        self.step = step
        self._length = max(0, length)

    @classmethod
    def between(cls, start: date, end: date, step: timedelta) -> DateRange:
        """The items from ``start`` to ``end`` inclusive; raises ValueError on a bad step."""
        if step == timedelta(0):
            raise ValueError("step must not be zero")
        if isinstance(start, datetime):
            if not isinstance(end, datetime):
                raise ValueError("start is a datetime but end is not")
            span = end.astimezone(UTC) - start.astimezone(UTC)
            length = span // step + 1 if (span >= timedelta(0)) == (step > timedelta(0)) or not span else 0
            return cls(start, step, length)
        if isinstance(end, datetime):
            raise ValueError("start is a date but end is a datetime")
        if step.seconds or step.microseconds:
            raise ValueError("a date range steps by whole days")
        days = (end - start).days
        length = days // step.days + 1 if days == 0 or (days > 0) == (step.days > 0) else 0
        return cls(start, step, length)

    def __len__(self) -> int:
        return self._length

    def _item(self, i: int) -> date:
        if isinstance(self.start, datetime):
            tz = self.start.tzinfo
            return (self.start.astimezone(UTC) + self.step * i).astimezone(tz)
        return self.start + self.step * i

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> DateRange: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            picked = range(self._length)[index]
            if not picked:
                return DateRange(self.start, self.step, 0)
            return DateRange(self._item(picked.start), self.step * picked.step, len(picked))
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError("date range index out of range")
        return self._item(index)

    def __iter__(self) -> Iterator[Any]:
        if isinstance(self.start, datetime):
            tz = self.start.tzinfo
            cursor = self.start.astimezone(UTC)
            for _ in range(self._length):
                yield cursor.astimezone(tz)
                cursor += self.step
        else:
            day = self.start
            for i in range(self._length):
                yield day
                if i + 1 < self._length:  # never step past the last item (it may be date.max)
                    day += self.step

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, date) or isinstance(value, datetime) != isinstance(self.start, datetime):
            return False
        if not self._length:
            return False
        if isinstance(value, datetime):
            assert isinstance(self.start, datetime)
            offset = value.astimezone(UTC) - self.start.astimezone(UTC)
        else:
            offset = value - self.start
        n, rest = divmod(offset, self.step)
        return not rest and 0 <= n < self._length

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DateRange):
            return NotImplemented
        if self._length != other._length:
            return False
        return self._length == 0 or (
            self.start == other.start and (self._length == 1 or self.step == other.step)
        )

    def __hash__(self) -> int:
        return hash((self.start, self.step, self._length))

    def __repr__(self) -> str:
        if not self._length:
            return "DateRange(empty)"
        return f"DateRange({self.start.isoformat()}..{self[-1].isoformat()} step {format_duration(self.step.total_seconds())})"


SEQUENCE_TYPES: frozenset[type] = frozenset({list, tuple, range, DateRange})
SET_TYPES: frozenset[type] = frozenset({set, frozenset})


def type_name(value: object) -> str:
    """The SEL name of a value's type, as used in messages and by ``type()``."""
    t = type(value)
    if value is None:
        return "null"
    if t is bool:
        return "bool"
    if t is int:
        return "int"
    if t is float:
        return "float"
    if t is str:
        return "string"
    if t is list or t is tuple:
        return "list"
    if t is range or t is DateRange:
        return "range"
    if isinstance(value, Mapping):
        return "map"
    if t in SET_TYPES:
        return "set"
    if isinstance(value, datetime):
        return "datetime"
    if isinstance(value, date):
        return "date"
    if isinstance(value, timedelta):
        return "duration"
    return "host object"


def a_type(value: object) -> str:
    """The type name with its article, for messages: "an int", "a string"."""
    name = type_name(value)
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def is_sequence(value: object) -> bool:
    """Whether ``value`` is a SEL sequence (a list, tuple, range or date range)."""
    return type(value) in SEQUENCE_TYPES


def is_map(value: object) -> bool:
    """Whether ``value`` is a SEL map."""
    return type(value) is dict or isinstance(value, Mapping)


def is_number(value: object) -> bool:
    """Whether ``value`` is a SEL number (int, float or bool)."""
    return type(value) in NUMBER_TYPES


def check_hashable(value: object, what: str) -> None:
    """Set items and map lookups by value accept scalars only (lists cannot be hashed)."""
    if type(value) not in HASHABLE_TYPES and not isinstance(value, (date, timedelta)):
        raise SelEvalError(
            f"{what} must be a scalar (null, bool, number, string, date, duration), got {type_name(value)}"
        )


# ---------------------------------------------------------------------------- iteration


def iterate(value: Any, ctx: Ctx) -> Sequence[Any] | str | Mapping[Any, Any]:
    """What a comprehension or a collection function walks over; sets in sorted order (deterministic)."""
    t = type(value)
    if t in SEQUENCE_TYPES or t is str or t is dict:
        return value  # type: ignore[no-any-return]
    if t in SET_TYPES:
        return sort_values(list(value), ctx, what="set items")
    if isinstance(value, Mapping):
        return value
    raise SelEvalError(f"cannot iterate over {a_type(value)}")


def size_of(value: Any) -> int:
    """Number of items a collection function will visit (for charging before the visit)."""
    t = type(value)
    if t is str or t in SEQUENCE_TYPES or t in SET_TYPES or t is dict:
        try:
            return len(value)
        except OverflowError:  # range longer than sys.maxsize
            return 1 << 63
    if isinstance(value, Mapping):
        return len(value)
    return 0


# ---------------------------------------------------------------------------- ordering

_ORDER_KINDS: dict[type, str] = {
    int: "number",
    float: "number",
    bool: "number",
    str: "string",
    date: "date",
    datetime: "datetime",
    timedelta: "duration",
}


def order_kind(value: object) -> str | None:
    """The kind values must share to be compared with ``<`` (number, string, date, datetime, duration);
    None if unordered."""
    kind = _ORDER_KINDS.get(type(value))
    if kind is None and isinstance(value, date):
        kind = "datetime" if isinstance(value, datetime) else "date"
    elif kind is None and isinstance(value, timedelta):
        kind = "duration"
    return kind


def sort_values(items: list[Any], ctx: Ctx, *, what: str = "items", reverse: bool = False) -> list[Any]:
    """Sort scalars of one kind (numbers, strings, dates, datetimes or durations); pays n·log2(n)."""
    n = len(items)
    if n > 1:
        ctx.charge(n * max(1, n.bit_length()))
        kinds = {order_kind(x) for x in items}
        if None in kinds or len(kinds) != 1:
            names = sorted({type_name(x) for x in items})
            raise SelEvalError(f"cannot sort {what} of mixed or unordered types: {', '.join(names)}")
        if "string" in kinds:
            ctx.charge_chars(sum(len(x) for x in items))
        if "number" in kinds and any(isinstance(x, float) and math.isnan(x) for x in items):
            raise SelEvalError(f"cannot sort {what} containing nan")
        if "datetime" in kinds:
            return sorted(items, key=instant, reverse=reverse)
    return sorted(items, reverse=reverse)


def instant(value: Any) -> Any:
    """The sort/equality key of a value: aware datetimes as UTC instants.

    Python compares two datetimes of one zone by wall time, ignoring ``fold`` (the two 02:30s of
    a fall-back night are "equal"), and calls ambiguous datetimes of different zones unequal.
    SEL compares instants.
    """
    if isinstance(value, datetime) and value.utcoffset() is not None:
        return value.astimezone(UTC)
    return value


def less_than(a: Any, b: Any, ctx: Ctx, depth: int = 0) -> bool:
    """``a < b`` for SEL values: scalars of one kind, or sequences compared item by item."""
    ka, kb = order_kind(a), order_kind(b)
    if ka is not None and ka == kb:
        if ka == "string":
            ctx.charge_chars(min(len(a), len(b)))
        if ka == "datetime":
            return bool(instant(a) < instant(b))
        return bool(a < b)
    if is_sequence(a) and is_sequence(b):
        ctx.check_depth(depth + 1)
        n = min(len(a), len(b))
        for i in range(n):
            ctx.charge(1)
            x, y = a[i], b[i]
            if not equal(x, y, ctx, depth + 1):
                return less_than(x, y, ctx, depth + 1)
        return len(a) < len(b)
    raise SelEvalError(f"cannot compare {type_name(a)} with {type_name(b)}")


# ---------------------------------------------------------------------------- equality


def equal(a: Any, b: Any, ctx: Ctx, depth: int = 0) -> bool:
    """``a == b`` for SEL values, paying for every element of containers it visits."""
    ta, tb = type(a), type(b)
    if ta in SCALAR_TYPES and tb in SCALAR_TYPES:
        if ta is str and tb is str:
            ctx.charge_chars(min(len(a), len(b)))
        elif ta is datetime and tb is datetime:
            return bool(instant(a) == instant(b))
        return bool(a == b)
    if a is b:
        return True
    if ta in SEQUENCE_TYPES and tb in SEQUENCE_TYPES:
        if len(a) != len(b):
            return False
        if (ta is range and tb is range) or (ta is DateRange and tb is DateRange):
            return bool(a == b)
        ctx.check_depth(depth + 1)
        n = len(a)
        ctx.charge(n)
        if ta is list and tb is list and set(map(type, a)) | set(map(type, b)) <= _FLAT_TYPES:
            return bool(a == b)  # flat lists of small scalars: C compares them in time linear in n
        return all(equal(a[i], b[i], ctx, depth + 1) for i in range(n))
    if is_map(a) and is_map(b):
        if len(a) != len(b):
            return False
        ctx.check_depth(depth + 1)
        ctx.charge(len(a))
        return all(key in b and equal(value, b[key], ctx, depth + 1) for key, value in a.items())
    if ta in SET_TYPES and tb in SET_TYPES:
        ctx.charge(len(a) + len(b))
        return bool(a == b)
    if ta in SCALAR_TYPES or tb in SCALAR_TYPES:
        # subclasses of date/datetime/timedelta (from the host) still compare by value
        return bool(isinstance(a, (date, timedelta)) and isinstance(b, (date, timedelta)) and a == b)
    return False


def contains(container: Any, item: Any, ctx: Ctx) -> bool:
    """``item in container``: substring, map key, set member, range member, or sequence item."""
    t = type(container)
    if t is str:
        if type(item) is not str:
            raise SelEvalError(f"'in <string>' needs a string on the left, got {type_name(item)}")
        ctx.charge_chars(len(container))
        return item in container
    if t is range:
        # never let Python scan a range (1.5 in range(10**18) iterates): only whole numbers can be in it
        if type(item) is int or type(item) is bool:
            return item in container
        if type(item) is float and item.is_integer():
            return int(item) in container
        return False
    if t is DateRange:
        return item in container
    if t in SEQUENCE_TYPES:
        ctx.charge(len(container))
        if type(item) in SCALAR_TYPES and type(item) is not str:
            # fast path: scalar needles only equal scalars, which C compares in constant time each
            return any(type(x) in SCALAR_TYPES and x == item for x in container)
        return any(equal(x, item, ctx, 1) for x in container)
    if t in SET_TYPES:
        check_hashable(item, "a set member")
        return item in container
    if is_map(container):
        if type(item) not in HASHABLE_TYPES:
            return False
        return item in container
    raise SelEvalError(
        f"'in' needs a string, list, map, set or range on the right, got {type_name(container)}"
    )


# ---------------------------------------------------------------------------- text and JSON


def to_text(value: Any, ctx: Ctx) -> str:
    """The text of a value, as ``str()`` and templates render it (JSON-flavoured for bool, null, lists)."""
    t = type(value)
    if t is str:
        return value  # type: ignore[no-any-return]
    if value is None:
        return "null"
    if t is bool:
        return "true" if value else "false"
    if t is int:
        return str(value)
    if t is float:
        return repr(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return format_duration(value.total_seconds())
    return to_json_text(value, ctx)


def to_json_text(value: Any, ctx: Ctx, *, indent: int | None = None) -> str:
    """Compact JSON (or indented) for a SEL value; dates and datetimes as ISO text, durations as seconds."""
    parts: list[str] = []
    budget = [ctx.limits.max_string]

    def emit(text: str) -> None:
        budget[0] -= len(text)
        if budget[0] < 0:
            ctx.check_string(ctx.limits.max_string + 1)
        ctx.charge_chars(len(text))
        parts.append(text)

    def walk(v: Any, depth: int, pad: str) -> None:
        ctx.charge(1)
        t = type(v)
        if t is str:
            emit(json.dumps(v, ensure_ascii=False))
        elif v is None or t is bool or t is int:
            emit(to_text(v, ctx))
        elif t is float:
            if not math.isfinite(v):
                raise SelEvalError(f"cannot write {v!r} as JSON")
            emit(repr(v))
        elif isinstance(v, (date, timedelta)):
            if isinstance(v, timedelta):
                seconds = v.total_seconds()
                emit(str(int(seconds)) if seconds.is_integer() else repr(seconds))
            else:
                emit(json.dumps(v.isoformat()))
        elif t in SEQUENCE_TYPES or t in SET_TYPES:
            ctx.check_depth(depth + 1)
            items = iterate(v, ctx)
            if not len(items):
                emit("[]")
                return
            inner = pad + " " * indent if indent is not None else ""
            emit("[")
            for i, item in enumerate(items):
                if i:
                    emit(",")
                if indent is not None:
                    emit("\n" + inner)
                walk(item, depth + 1, inner)
            emit("\n" + pad + "]" if indent is not None else "]")
        elif is_map(v):
            ctx.check_depth(depth + 1)
            if not len(v):
                emit("{}")
                return
            inner = pad + " " * indent if indent is not None else ""
            emit("{")
            for i, (key, item) in enumerate(v.items()):
                if i:
                    emit(",")
                if indent is not None:
                    emit("\n" + inner)
                emit(json.dumps(key if type(key) is str else to_text(key, ctx), ensure_ascii=False))
                emit(": " if indent is not None else ":")
                walk(item, depth + 1, inner)
            emit("\n" + pad + "}" if indent is not None else "}")
        else:
            raise SelEvalError(f"cannot write {a_type(v)} as JSON")

    walk(value, 0, "")
    return "".join(parts)


def from_json_data(data: Any, ctx: Ctx, depth: int = 0) -> Any:
    """Check (and pay for) data decoded from JSON text: depth and collection sizes."""
    t = type(data)
    if t is list:
        ctx.check_depth(depth + 1)
        ctx.check_collection(len(data))
        for item in data:
            if type(item) is list or type(item) is dict:
                from_json_data(item, ctx, depth + 1)
    elif t is dict:
        ctx.check_depth(depth + 1)
        ctx.check_collection(len(data))
        for item in data.values():
            if type(item) is list or type(item) is dict:
                from_json_data(item, ctx, depth + 1)
    return data
