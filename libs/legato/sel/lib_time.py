"""Library: dates, datetimes (always time-zone aware), durations, time zones, date ranges.

Arithmetic rules: ``datetime ± duration`` is exact elapsed time; ``add_days``/``add_months`` are
calendar arithmetic that keep the local time of day (a local time that does not exist on the
result day moves forward past the gap; an ambiguous one takes its first occurrence).
"""

from __future__ import annotations

import calendar
import functools
import math
import re
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from legato.sel.durations import MAX_SECONDS, format_duration, parse_duration_text
from legato.sel.errors import SelEvalError
from legato.sel.lib_registry import fail, library, want_int, want_number, want_str
from legato.sel.lib_text import check_strftime
from legato.sel.runtime import Ctx
from legato.sel.values import DateRange, a_type, type_name

_ZONE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]*(?:/[A-Za-z0-9_+\-]+){0,3}")


@functools.lru_cache(maxsize=512)
def _load_zone(name: str) -> tzinfo:
    if name == "UTC":
        return UTC
    return ZoneInfo(name)


def zone(name: str) -> tzinfo:
    """The time zone called ``name`` (IANA, e.g. ``Europe/Paris``); ValueError when there is none."""
    if not isinstance(name, str) or len(name) > 64 or not _ZONE_NAME.fullmatch(name):
        raise ValueError(f"invalid time zone {str(name)[:64]!r}")
    try:
        return _load_zone(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r}") from None


def _zone_arg(value: Any, fn: str) -> tzinfo:
    try:
        return zone(want_str(value, fn, "tz"))
    except ValueError as exc:
        raise fail(fn, str(exc)) from None


def resolve_local(naive: datetime, tz: tzinfo) -> datetime:
    """An aware datetime for a local wall time: a nonexistent time (spring-forward gap) becomes the
    first instant after the gap; an ambiguous one (fall-back) its first occurrence."""
    aware = naive.replace(tzinfo=tz, fold=0)
    roundtrip = aware.astimezone(UTC).astimezone(tz)
    if roundtrip.replace(tzinfo=None) == naive:
        return aware
    # In a gap: fold=1 maps to an instant before the transition, fold=0 to one after it.
    lo = naive.replace(tzinfo=tz, fold=1).astimezone(UTC)
    hi = aware.astimezone(UTC)
    if lo > hi:
        lo, hi = hi, lo
    after = hi.astimezone(tz).utcoffset()
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        mid = mid.replace(microsecond=0)
        if mid.astimezone(tz).utcoffset() == after:
            hi = mid
        else:
            lo = mid
    return hi.astimezone(tz)


def _aware(value: datetime, tz: tzinfo | None = None) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        return resolve_local(value, tz or UTC)
    return value


def _parse_datetime_text(text: str, fn: str, tz: tzinfo | None) -> datetime:
    if len(text) > 64:
        raise fail(fn, "text too long for a datetime")
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise fail(fn, f"invalid ISO 8601 datetime {text[:40]!r}") from None
    return _aware(value, tz)


# ---------------------------------------------------------------------------- constructors


@library("date")
def date_(ctx: Ctx, *args: Any, tz: Any = None) -> date:
    """``date("2026-11-01")``, ``date(2026, 11, 1)``, or the date of a datetime (in ``tz`` when given)."""
    if len(args) == 3:
        y, m, d = (want_int(a, "date", n) for a, n in zip(args, ("year", "month", "day"), strict=True))
        try:
            return date(y, m, d)
        except (ValueError, OverflowError) as exc:
            raise fail("date", str(exc)) from None
    if len(args) != 1:
        raise fail("date", "expected date(text), date(datetime) or date(year, month, day)")
    value = args[0]
    if isinstance(value, datetime):
        return (value.astimezone(_zone_arg(tz, "date")) if tz is not None else value).date()
    if isinstance(value, date):
        return value
    if type(value) is str:
        text = value.strip()
        if len(text) > 64:
            raise fail("date", "text too long for a date")
        try:
            return date.fromisoformat(text)
        except ValueError:
            pass
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise fail("date", f"invalid ISO 8601 date {text[:40]!r}") from None
        parsed = _aware(parsed)
        return (parsed.astimezone(_zone_arg(tz, "date")) if tz is not None else parsed).date()
    raise fail("date", f"cannot make a date from {a_type(value)}")


@library("datetime")
def datetime_(ctx: Ctx, *args: Any, tz: Any = None) -> datetime:
    """``datetime("2026-11-01T02:00:00+01:00")`` (naive text is read in ``tz``, default UTC),
    ``datetime(date, tz)``, ``datetime(2026, 11, 1, 2, 30, tz="Europe/Paris")``, or a datetime moved to ``tz``."""
    zone_ = _zone_arg(tz, "datetime") if tz is not None else None
    if len(args) >= 3:
        if len(args) > 7:
            raise fail("datetime", "expected at most year, month, day, hour, minute, second, microsecond")
        parts = [want_int(a, "datetime", "part") for a in args]
        try:
            naive = datetime(*parts)  # type: ignore[arg-type]
        except (ValueError, OverflowError) as exc:
            raise fail("datetime", str(exc)) from None
        return resolve_local(naive, zone_ or UTC)
    if len(args) == 2:
        if tz is not None:
            raise fail("datetime", "give the time zone once")
        zone_ = _zone_arg(args[1], "datetime")
    elif len(args) != 1:
        raise fail(
            "datetime", "expected datetime(text), datetime(date, tz) or datetime(year, month, day, ...)"
        )
    value = args[0]
    if isinstance(value, datetime):
        value = _aware(value)
        return value.astimezone(zone_) if zone_ is not None else value
    if isinstance(value, date):
        return resolve_local(datetime(value.year, value.month, value.day), zone_ or UTC)
    if type(value) is str:
        return _parse_datetime_text(value, "datetime", zone_)
    raise fail("datetime", f"cannot make a datetime from {a_type(value)}")


@library("now", pure=False)
def now(ctx: Ctx, tz: Any = "UTC") -> datetime:
    """The current time in ``tz`` (the evaluation's fixed clock when one is set)."""
    return ctx.clock().astimezone(_zone_arg(tz, "now"))


@library("today", pure=False)
def today(ctx: Ctx, tz: Any = "UTC") -> date:
    """Today's date in ``tz`` (the evaluation's fixed clock when one is set)."""
    return ctx.clock().astimezone(_zone_arg(tz, "today")).date()


# ---------------------------------------------------------------------------- durations


def _seconds(fn: str, value: Any, unit: float) -> timedelta:
    n = want_number(value, fn, "amount")
    seconds = n * unit
    if not math.isfinite(seconds) or abs(seconds) > MAX_SECONDS:
        raise fail(fn, "duration out of range")
    return timedelta(seconds=seconds)


def _unit(name: str, unit: float, summary: str) -> None:
    def make(ctx: Ctx, n: Any) -> timedelta:
        return _seconds(name, n, unit)

    make.__doc__ = summary
    make.__name__ = name
    library(name)(make)


for _name, _unit_seconds, _summary in (
    ("weeks", 604800.0, "A duration of ``n`` weeks."),
    ("days", 86400.0, "A duration of ``n`` days (exactly 24 hours each; see add_days for calendar days)."),
    ("hours", 3600.0, "A duration of ``n`` hours."),
    ("minutes", 60.0, "A duration of ``n`` minutes."),
    ("seconds", 1.0, "A duration of ``n`` seconds."),
    ("milliseconds", 0.001, "A duration of ``n`` milliseconds."),
):
    _unit(_name, _unit_seconds, _summary)


@library("duration")
def duration(ctx: Ctx, value: Any) -> timedelta:
    """A duration from text (``"1h30m"``, ``"90s"``, ``"2d"``) or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if type(value) is str:
        try:
            return timedelta(seconds=parse_duration_text(value))
        except ValueError as exc:
            raise fail("duration", str(exc)) from None
    return _seconds("duration", value, 1.0)


@library("total_seconds", methods=("duration",))
def total_seconds(ctx: Ctx, value: Any) -> float:
    """Seconds in a duration (a float)."""
    if not isinstance(value, timedelta):
        raise fail("total_seconds", f"expected a duration, got {type_name(value)}")
    return value.total_seconds()


@library("format_duration")
def format_duration_(ctx: Ctx, value: Any) -> str:
    """Compact text of a duration: ``"1h30m"``."""
    if not isinstance(value, timedelta):
        raise fail("format_duration", f"expected a duration, got {type_name(value)}")
    return format_duration(value.total_seconds())


# ---------------------------------------------------------------------------- calendar


def _date_or_datetime(value: Any, fn: str) -> date:
    if not isinstance(value, date):
        raise fail(fn, f"expected a date or datetime, got {type_name(value)}")
    return value


def _shift_calendar(value: date, fn: str, *, months: int = 0, days_: int = 0) -> date:
    """Calendar shift; datetimes keep their local time of day."""
    try:
        if months:
            total = value.year * 12 + value.month - 1 + months
            year, month = divmod(total, 12)
            month += 1
            day = min(value.day, calendar.monthrange(year, month)[1])
            moved = value.replace(year=year, month=month, day=day)
        else:
            moved = value
        if days_:
            if isinstance(moved, datetime):
                moved = datetime.combine(moved.date() + timedelta(days=days_), moved.timetz())
            else:
                moved = moved + timedelta(days=days_)
    except (ValueError, OverflowError, calendar.IllegalMonthError):
        raise fail(fn, "date out of range") from None
    if isinstance(moved, datetime) and moved.tzinfo is not None:
        return resolve_local(moved.replace(tzinfo=None), moved.tzinfo)
    return moved


@library("add_days")
def add_days(ctx: Ctx, value: Any, n: Any) -> date:
    """Calendar days added (local time of day kept for datetimes, across DST changes)."""
    return _shift_calendar(
        _date_or_datetime(value, "add_days"), "add_days", days_=want_int(n, "add_days", "n")
    )


@library("add_months")
def add_months(ctx: Ctx, value: Any, n: Any) -> date:
    """Months added; the day is clamped to the month's end (Jan 31 + 1 month = Feb 28/29)."""
    months = want_int(n, "add_months", "n")
    return _shift_calendar(_date_or_datetime(value, "add_months"), "add_months", months=months)


@library("add_years")
def add_years(ctx: Ctx, value: Any, n: Any) -> date:
    """Years added (Feb 29 becomes Feb 28 in a common year)."""
    years = want_int(n, "add_years", "n")
    if abs(years) > 10_000:
        raise fail("add_years", "date out of range")
    return _shift_calendar(_date_or_datetime(value, "add_years"), "add_years", months=12 * years)


def _start_of_day(value: date, day: date) -> date:
    if isinstance(value, datetime):
        return resolve_local(datetime(day.year, day.month, day.day), value.tzinfo or UTC)
    return day


@library("start_of_month")
def start_of_month(ctx: Ctx, value: Any) -> date:
    """The first day of the month (midnight local time for a datetime)."""
    v = _date_or_datetime(value, "start_of_month")
    return _start_of_day(v, date(v.year, v.month, 1))


@library("end_of_month")
def end_of_month(ctx: Ctx, value: Any) -> date:
    """The last day of the month (midnight local time for a datetime)."""
    v = _date_or_datetime(value, "end_of_month")
    return _start_of_day(v, date(v.year, v.month, calendar.monthrange(v.year, v.month)[1]))


@library("start_of_week")
def start_of_week(ctx: Ctx, value: Any) -> date:
    """The Monday of the week (midnight local time for a datetime)."""
    v = _date_or_datetime(value, "start_of_week")
    day = date(v.year, v.month, v.day)
    try:
        return _start_of_day(v, day - timedelta(days=day.weekday()))
    except OverflowError:
        raise fail("start_of_week", "date out of range") from None


@library("start_of_day")
def start_of_day(ctx: Ctx, value: Any) -> date:
    """Midnight local time of a datetime's day (a date is returned as is)."""
    v = _date_or_datetime(value, "start_of_day")
    return _start_of_day(v, date(v.year, v.month, v.day))


def _part(fn: str, value: Any, attr: str, kinds: type | tuple[type, ...] = date) -> int:
    if not isinstance(value, kinds):
        raise fail(
            fn,
            f"expected a {'datetime' if kinds is datetime else 'date or datetime'}, got {type_name(value)}",
        )
    part: int = getattr(value, attr)
    return part


@library("year")
def year(ctx: Ctx, value: Any) -> int:
    """The year of a date or datetime."""
    return _part("year", value, "year")


@library("month")
def month(ctx: Ctx, value: Any) -> int:
    """The month (1-12) of a date or datetime."""
    return _part("month", value, "month")


@library("day")
def day(ctx: Ctx, value: Any) -> int:
    """The day of the month of a date or datetime."""
    return _part("day", value, "day")


@library("hour")
def hour(ctx: Ctx, value: Any) -> int:
    """The hour (local) of a datetime."""
    return _part("hour", value, "hour", datetime)


@library("minute")
def minute(ctx: Ctx, value: Any) -> int:
    """The minute of a datetime."""
    return _part("minute", value, "minute", datetime)


@library("second")
def second(ctx: Ctx, value: Any) -> int:
    """The second of a datetime."""
    return _part("second", value, "second", datetime)


@library("weekday")
def weekday(ctx: Ctx, value: Any) -> int:
    """Day of the week: 0 = Monday ... 6 = Sunday."""
    return _date_or_datetime(value, "weekday").weekday()


@library("days_between")
def days_between(ctx: Ctx, start: Any, end: Any) -> int:
    """Whole calendar days from ``start`` to ``end`` (negative when ``end`` is earlier)."""
    a = _date_or_datetime(start, "days_between")
    b = _date_or_datetime(end, "days_between")
    da = a.date() if isinstance(a, datetime) else a
    db = b.date() if isinstance(b, datetime) else b
    return (db - da).days


@library("to_timezone")
def to_timezone(ctx: Ctx, value: Any, tz: Any) -> datetime:
    """The same instant shown in another time zone."""
    if not isinstance(value, datetime):
        raise fail("to_timezone", f"expected a datetime, got {type_name(value)}")
    try:
        return _aware(value).astimezone(_zone_arg(tz, "to_timezone"))
    except OverflowError:
        raise fail("to_timezone", "datetime out of range") from None


@library("timezone")
def timezone_(ctx: Ctx, value: Any) -> str:
    """The name of a datetime's time zone (``"UTC"``, ``"Europe/Paris"``; else its UTC offset)."""
    if not isinstance(value, datetime):
        raise fail("timezone", f"expected a datetime, got {type_name(value)}")
    tz = value.tzinfo
    if tz is UTC:
        return "UTC"
    if isinstance(tz, ZoneInfo):
        return tz.key
    return value.strftime("%z") or "UTC"


@library("timestamp")
def timestamp(ctx: Ctx, value: Any) -> float:
    """Seconds since 1970-01-01T00:00:00Z."""
    if not isinstance(value, datetime):
        raise fail("timestamp", f"expected a datetime, got {type_name(value)}")
    return _aware(value).timestamp()


@library("from_timestamp")
def from_timestamp(ctx: Ctx, value: Any, tz: Any = "UTC") -> datetime:
    """The datetime ``value`` seconds after 1970-01-01T00:00:00Z, in ``tz``."""
    n = want_number(value, "from_timestamp", "seconds")
    try:
        return datetime.fromtimestamp(n, _zone_arg(tz, "from_timestamp"))
    except (ValueError, OverflowError, OSError):
        raise fail("from_timestamp", "timestamp out of range") from None


@library("format_date")
def format_date(ctx: Ctx, value: Any, fmt: Any = "%Y-%m-%d") -> str:
    """A date or datetime as text with strftime directives (``%Y%m%d``); no widths or flags."""
    v = _date_or_datetime(value, "format_date")
    f = want_str(fmt, "format_date", "fmt")
    check_strftime(f, "format_date")
    out = v.strftime(f)
    ctx.check_string(len(out))
    return out


@library("parse_date")
def parse_date(ctx: Ctx, text: Any, fmt: Any = None) -> date:
    """A date from text: ISO 8601 by default, or with strftime directives (``"%d/%m/%Y"``)."""
    s = want_str(text, "parse_date", "text")
    if fmt is None:
        return date_(ctx, s)
    return _strptime(s, fmt, "parse_date").date()


@library("parse_datetime")
def parse_datetime(ctx: Ctx, text: Any, fmt: Any = None, tz: Any = "UTC") -> datetime:
    """A datetime from text: ISO 8601 by default, or with strftime directives; naive text is read in ``tz``."""
    s = want_str(text, "parse_datetime", "text")
    zone_ = _zone_arg(tz, "parse_datetime")
    if fmt is None:
        return _parse_datetime_text(s, "parse_datetime", zone_)
    return _aware(_strptime(s, fmt, "parse_datetime"), zone_)


def _strptime(text: str, fmt: Any, fn: str) -> datetime:
    f = want_str(fmt, fn, "fmt")
    check_strftime(f, fn)
    if len(text) > 200:
        raise fail(fn, "text longer than 200 characters")
    try:
        return datetime.strptime(text, f)
    except ValueError as exc:
        raise fail(fn, str(exc)[:160]) from None


# ---------------------------------------------------------------------------- ranges


@library("date_range")
def date_range(ctx: Ctx, start: Any, end: Any, step: Any = None) -> DateRange:
    """Dates (or datetimes) from ``start`` to ``end`` *inclusive*, every ``step`` (default 1 day); lazy."""
    a = _date_or_datetime(start, "date_range")
    b = _date_or_datetime(end, "date_range")
    if step is None:
        step = timedelta(days=1)
    elif not isinstance(step, timedelta):
        raise fail("date_range", f"step must be a duration, got {type_name(step)}")
    if isinstance(a, datetime):
        a = _aware(a)
    if isinstance(b, datetime):
        b = _aware(b)
    try:
        return DateRange.between(a, b, step)
    except ValueError as exc:
        raise fail("date_range", str(exc)) from None
    except OverflowError:
        raise SelEvalError("date_range(): range out of bounds") from None
