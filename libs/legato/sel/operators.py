"""SEL operators: arithmetic, comparison and membership, with the size checks Python leaves out.

Each operator is ``op(a, b, ctx)``. Results that could grow without bound are sized *before* they
are built: ``"x" * 10**9``, ``[0] * 10**9`` and ``10 ** 10 ** 10`` meet a limit at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from legato.sel.errors import SelEvalError, SelLimitError
from legato.sel.runtime import Ctx
from legato.sel.values import (
    SEQUENCE_TYPES,
    SET_TYPES,
    contains,
    equal,
    is_map,
    less_than,
    type_name,
)

BinaryOp = Callable[[Any, Any, Ctx], Any]

_INT = int
_FLOAT = float


def _unsupported(symbol: str, a: Any, b: Any) -> SelEvalError:
    return SelEvalError(f"unsupported operand types for {symbol}: {type_name(a)} and {type_name(b)}")


def _is_num(t: type) -> bool:
    return t is int or t is float or t is bool


def _exact_shift(value: datetime, delta: timedelta) -> datetime:
    """``datetime ± duration`` as exact elapsed time, shown in the original zone."""
    try:
        return (value.astimezone(UTC) + delta).astimezone(value.tzinfo)
    except OverflowError:
        raise SelEvalError("datetime out of range") from None


def add(a: Any, b: Any, ctx: Ctx) -> Any:
    """``a + b``: numbers, strings, lists, maps, and dates or datetimes plus durations, within the limits."""
    ta, tb = a.__class__, b.__class__
    if ta is _INT and tb is _INT:
        return ctx.check_int(a + b)
    if (ta is _FLOAT and (tb is _FLOAT or tb is _INT)) or (ta is _INT and tb is _FLOAT):
        return a + b
    if ta is str and tb is str:
        ctx.check_string(len(a) + len(b))
        return a + b
    if ta in SEQUENCE_TYPES and tb in SEQUENCE_TYPES:
        ctx.check_collection(len(a) + len(b))
        return [*a, *b]
    if isinstance(b, timedelta):
        if isinstance(a, datetime):
            return _exact_shift(a, b)
        if isinstance(a, (date, timedelta)):
            try:
                return a + b
            except OverflowError:
                raise SelEvalError(f"{type_name(a)} out of range") from None
    if isinstance(a, timedelta) and isinstance(b, date):
        return add(b, a, ctx)
    if _is_num(ta) and _is_num(tb):
        r = a + b
        return ctx.check_int(r) if type(r) is int else r
    raise _unsupported("+", a, b)


def sub(a: Any, b: Any, ctx: Ctx) -> Any:
    """``a - b``: numbers, sets, and dates, datetimes and durations."""
    ta, tb = a.__class__, b.__class__
    if ta is _INT and tb is _INT:
        return ctx.check_int(a - b)
    if _is_num(ta) and _is_num(tb):
        r = a - b
        return ctx.check_int(r) if type(r) is int else r
    if isinstance(a, datetime):
        if isinstance(b, datetime):
            return a.astimezone(UTC) - b.astimezone(UTC)
        if isinstance(b, timedelta):
            return _exact_shift(a, -b)
    elif isinstance(a, date):
        if isinstance(b, date) and not isinstance(b, datetime):
            return a - b
        if isinstance(b, timedelta):
            try:
                return a - b
            except OverflowError:
                raise SelEvalError("date out of range") from None
    elif isinstance(a, timedelta) and isinstance(b, timedelta):
        try:
            return a - b
        except OverflowError:
            raise SelEvalError("duration out of range") from None
    if ta in SET_TYPES and tb in SET_TYPES:
        ctx.charge(len(a))
        return a - b
    raise _unsupported("-", a, b)


def _repeat(seq: Any, n: int, ctx: Ctx) -> Any:
    if not seq or n <= 0:
        # Python refuses a count past sys.maxsize even for an empty sequence.
        return "" if type(seq) is str else []
    if type(seq) is str:
        ctx.check_string(len(seq) * max(n, 0))
        return seq * n
    ctx.check_collection(len(seq) * max(n, 0))
    return list(seq) * n


def mul(a: Any, b: Any, ctx: Ctx) -> Any:
    """``a * b``: numbers, a string or list repeated, a duration scaled, within the limits."""
    ta, tb = a.__class__, b.__class__
    if ta is _INT and tb is _INT:
        bits = a.bit_length() + b.bit_length() - 1  # the product has this many bits, or one more
        if a and b and bits > ctx.limits.max_int_bits:
            raise SelLimitError(
                f"integer of at least {bits} bits exceeds the limit of {ctx.limits.max_int_bits} bits",
                limit="max_int_bits",
            )
        return ctx.check_int(a * b)
    if _is_num(ta) and _is_num(tb):
        r = a * b
        return ctx.check_int(r) if type(r) is int else r
    if (ta is str or ta in SEQUENCE_TYPES) and (tb is _INT or tb is bool):
        return _repeat(a, int(b), ctx)
    if (tb is str or tb in SEQUENCE_TYPES) and (ta is _INT or ta is bool):
        return _repeat(b, int(a), ctx)
    if isinstance(a, timedelta) and (tb is _INT or tb is _FLOAT):
        return _scale(a, b)
    if isinstance(b, timedelta) and (ta is _INT or ta is _FLOAT):
        return _scale(b, a)
    raise _unsupported("*", a, b)


def _scale(d: timedelta, n: int | float) -> timedelta:
    try:
        if isinstance(n, float) and not math.isfinite(n):
            raise OverflowError
        return d * n
    except OverflowError:
        raise SelEvalError("duration out of range") from None


def truediv(a: Any, b: Any, ctx: Ctx) -> Any:
    """``a / b``: numbers, a duration divided by a number or a duration."""
    ta, tb = a.__class__, b.__class__
    try:
        if _is_num(ta) and _is_num(tb):
            return a / b
        if isinstance(a, timedelta):
            if isinstance(b, timedelta):
                return a / b
            if _is_num(tb) and tb is not bool:
                if isinstance(b, float) and not math.isfinite(b):
                    raise SelEvalError("duration out of range")
                return a / b
    except ZeroDivisionError:
        raise SelEvalError("division by zero") from None
    except OverflowError:
        raise SelEvalError("result out of range") from None
    raise _unsupported("/", a, b)


def floordiv(a: Any, b: Any, ctx: Ctx) -> Any:
    """``a // b``: numbers, a duration divided by a duration or an int."""
    ta, tb = a.__class__, b.__class__
    try:
        if _is_num(ta) and _is_num(tb):
            return a // b
        if isinstance(a, timedelta) and (isinstance(b, timedelta) or tb is _INT):
            return a // b
    except ZeroDivisionError:
        raise SelEvalError("division by zero") from None
    except OverflowError:
        raise SelEvalError("result out of range") from None
    raise _unsupported("//", a, b)


def mod(a: Any, b: Any, ctx: Ctx) -> Any:
    """``a % b``: numbers, a duration modulo a duration."""
    ta, tb = a.__class__, b.__class__
    try:
        if _is_num(ta) and _is_num(tb):
            return a % b
        if isinstance(a, timedelta) and isinstance(b, timedelta):
            return a % b
    except ZeroDivisionError:
        raise SelEvalError("modulo by zero") from None
    if ta is str:
        raise SelEvalError("'%' formatting is not supported on strings; use format()")
    raise _unsupported("%", a, b)


def power(a: Any, b: Any, ctx: Ctx) -> Any:
    """``a ** b``: numbers, refused before computing a result larger than the int limit."""
    ta, tb = a.__class__, b.__class__
    if not (_is_num(ta) and _is_num(tb)):
        raise _unsupported("**", a, b)
    if ta is not _FLOAT and tb is not _FLOAT and b >= 0:
        # predict the size: |a| ** b has about b * log2|a| bits
        base_bits = abs(int(a)).bit_length()
        if base_bits > 1 and (base_bits - 1) * b > ctx.limits.max_int_bits:
            raise SelLimitError(
                f"integer power of about {(base_bits - 1) * b} bits exceeds the limit of "
                f"{ctx.limits.max_int_bits} bits",
                limit="max_int_bits",
            )
        return ctx.check_int(int(a) ** int(b))
    try:
        r = a**b
    except ZeroDivisionError:
        raise SelEvalError("zero cannot be raised to a negative power") from None
    except OverflowError:
        raise SelEvalError("result out of range") from None
    if isinstance(r, complex):
        raise SelEvalError("a negative number raised to a fractional power has no real value")
    return r


def _int_only(symbol: str, a: Any, b: Any) -> None:
    if not ((a.__class__ is _INT or a.__class__ is bool) and (b.__class__ is _INT or b.__class__ is bool)):
        raise _unsupported(symbol, a, b)


def lshift(a: Any, b: Any, ctx: Ctx) -> Any:
    """``a << b`` on ints, refused before exceeding the int limit."""
    _int_only("<<", a, b)
    if b < 0:
        raise SelEvalError("negative shift count")
    if a and abs(a).bit_length() + b > ctx.limits.max_int_bits:
        raise SelLimitError(
            f"integer of {abs(a).bit_length() + b} bits exceeds the limit of {ctx.limits.max_int_bits} bits",
            limit="max_int_bits",
        )
    return a << b


def rshift(a: Any, b: Any, ctx: Ctx) -> Any:
    """``a >> b`` on ints."""
    _int_only(">>", a, b)
    if b < 0:
        raise SelEvalError("negative shift count")
    return a >> min(b, ctx.limits.max_int_bits + 1)


def _set_or_int(symbol: str, a: Any, b: Any, ctx: Ctx, op: Callable[[Any, Any], Any]) -> Any:
    ta, tb = a.__class__, b.__class__
    if ta in SET_TYPES and tb in SET_TYPES:
        ctx.check_collection(len(a) + len(b))
        return op(a, b)
    _int_only(symbol, a, b)
    return op(a, b)


def bitor(a: Any, b: Any, ctx: Ctx) -> Any:
    """``a | b``: maps merged, sets united, ints or-ed."""
    if is_map(a) and is_map(b):
        ctx.check_collection(len(a) + len(b))
        return {**a, **b}
    return _set_or_int("|", a, b, ctx, lambda x, y: x | y)


def bitand(a: Any, b: Any, ctx: Ctx) -> Any:
    """``a & b``: sets intersected, ints and-ed."""
    return _set_or_int("&", a, b, ctx, lambda x, y: x & y)


def bitxor(a: Any, b: Any, ctx: Ctx) -> Any:
    """``a ^ b``: sets' symmetric difference, ints xor-ed."""
    return _set_or_int("^", a, b, ctx, lambda x, y: x ^ y)


# ---------------------------------------------------------------------------- unary


def neg(a: Any, ctx: Ctx) -> Any:
    """``-a``: numbers and durations."""
    t = a.__class__
    if t is _INT or t is _FLOAT or t is bool:
        return -a
    if isinstance(a, timedelta):
        try:
            return -a
        except OverflowError:
            raise SelEvalError("duration out of range") from None
    raise SelEvalError(f"bad operand type for unary -: {type_name(a)}")


def pos(a: Any, ctx: Ctx) -> Any:
    """``+a``: numbers and durations."""
    t = a.__class__
    if t is _INT or t is _FLOAT or t is bool or isinstance(a, timedelta):
        return +a
    raise SelEvalError(f"bad operand type for unary +: {type_name(a)}")


def invert(a: Any, ctx: Ctx) -> Any:
    """``~a`` on ints."""
    if a.__class__ is _INT or a.__class__ is bool:
        return ~a
    raise SelEvalError(f"bad operand type for unary ~: {type_name(a)}")


# ---------------------------------------------------------------------------- comparisons

_SIMPLE = frozenset({int, float, bool, str, date, timedelta, type(None)})  # datetimes compare as instants


def eq(a: Any, b: Any, ctx: Ctx) -> bool:
    """``a == b``: scalars by value (datetimes by instant), containers element by element."""
    if a.__class__ in _SIMPLE and b.__class__ in _SIMPLE and a.__class__ is not str:
        return bool(a == b)
    return equal(a, b, ctx)


def ne(a: Any, b: Any, ctx: Ctx) -> bool:
    """``a != b``."""
    return not eq(a, b, ctx)


def _ordered(a: Any, b: Any) -> bool:
    ta, tb = a.__class__, b.__class__
    if ta is tb and ta in (int, float, date, timedelta):
        return True
    return (ta is _INT or ta is _FLOAT) and (tb is _INT or tb is _FLOAT)


def lt(a: Any, b: Any, ctx: Ctx) -> bool:
    """``a < b``: scalars of one ordered kind, or sequences item by item."""
    if _ordered(a, b):
        return bool(a < b)
    return less_than(a, b, ctx)


def gt(a: Any, b: Any, ctx: Ctx) -> bool:
    """``a > b``: scalars of one ordered kind, or sequences item by item."""
    if _ordered(a, b):
        return bool(a > b)
    return less_than(b, a, ctx)


def le(a: Any, b: Any, ctx: Ctx) -> bool:
    """``a <= b``: scalars of one ordered kind, or sequences item by item."""
    if _ordered(a, b):
        return bool(a <= b)
    return not less_than(b, a, ctx)


def ge(a: Any, b: Any, ctx: Ctx) -> bool:
    """``a >= b``: scalars of one ordered kind, or sequences item by item."""
    if _ordered(a, b):
        return bool(a >= b)
    return not less_than(a, b, ctx)


def in_(a: Any, b: Any, ctx: Ctx) -> bool:
    """``a in b``: substring, map key, set member, range member, or sequence item."""
    return contains(b, a, ctx)


def not_in(a: Any, b: Any, ctx: Ctx) -> bool:
    """``a not in b``."""
    return not contains(b, a, ctx)
