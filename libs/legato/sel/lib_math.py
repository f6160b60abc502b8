"""Library: math on ints, floats and durations."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from legato.sel.lib_registry import fail, library, want_int, want_number
from legato.sel.operators import power
from legato.sel.runtime import Ctx
from legato.sel.values import order_kind, type_name


@library("abs")
def abs_(ctx: Ctx, value: Any) -> Any:
    """Absolute value of a number or a duration."""
    if type(value) in (int, float) or isinstance(value, timedelta):
        try:
            return abs(value)
        except OverflowError:
            raise fail("abs", "duration out of range") from None
    raise fail("abs", f"expected a number or duration, got {type_name(value)}")


@library("round")
def round_(ctx: Ctx, value: Any, ndigits: Any = None) -> int | float:
    """Rounded half to even; an int without ``ndigits``, else a number with ``ndigits`` decimals."""
    x = want_number(value, "round", "value")
    if ndigits is None:
        if isinstance(x, float) and not math.isfinite(x):
            raise fail("round", f"cannot round {x!r} to an int")
        return ctx.check_int(round(x))
    n = want_int(ndigits, "round", "ndigits")
    if not -400 <= n <= 400:  # round(5, -10**18) would compute 10**(10**18)
        raise fail("round", "ndigits must be between -400 and 400")
    return round(x, n)


def _to_int(fn: str, value: Any, op: Any) -> int:
    x = want_number(value, fn, "value")
    if isinstance(x, float) and not math.isfinite(x):
        raise fail(fn, f"cannot convert {x!r} to an int")
    result: int = op(x)
    return result


@library("floor")
def floor(ctx: Ctx, value: Any) -> int:
    """Largest int <= value."""
    return _to_int("floor", value, math.floor)


@library("ceil")
def ceil(ctx: Ctx, value: Any) -> int:
    """Smallest int >= value."""
    return _to_int("ceil", value, math.ceil)


def _float_op(fn: str, op: Any, *args: Any) -> float:
    for a in args:
        want_number(a, fn, "value")
    try:
        result: float = op(*args)
    except (ValueError, OverflowError) as exc:
        raise fail(fn, str(exc)) from None
    return result


@library("sqrt")
def sqrt(ctx: Ctx, value: Any) -> float:
    """Square root."""
    return _float_op("sqrt", math.sqrt, value)


@library("exp")
def exp(ctx: Ctx, value: Any) -> float:
    """e raised to ``value``."""
    return _float_op("exp", math.exp, value)


@library("log")
def log(ctx: Ctx, value: Any, base: Any = None) -> float:
    """Natural logarithm, or in ``base``."""
    if base is None:
        return _float_op("log", math.log, value)
    return _float_op("log", math.log, value, base)


@library("log10")
def log10(ctx: Ctx, value: Any) -> float:
    """Base-10 logarithm."""
    return _float_op("log10", math.log10, value)


@library("pow")
def pow_(ctx: Ctx, base: Any, exponent: Any) -> Any:
    """``base ** exponent`` (same limits as the operator)."""
    return power(base, exponent, ctx)


@library("clamp")
def clamp(ctx: Ctx, value: Any, low: Any, high: Any) -> Any:
    """``value`` limited to ``[low, high]`` (numbers, strings, dates or durations of one kind)."""
    kinds = {order_kind(value), order_kind(low), order_kind(high)}
    if None in kinds or len(kinds) != 1:
        raise fail("clamp", "value, low and high must be of one ordered kind")
    if high < low:
        raise fail("clamp", "high must be >= low")
    return min(max(value, low), high)
