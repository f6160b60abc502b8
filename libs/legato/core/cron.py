"""5-field cron schedules in a time zone, correct across daylight-saving changes.

Fields: minute (0-59), hour (0-23), day of month (1-31), month (1-12 or JAN-DEC), day of week
(0-7 or SUN-SAT; 0 and 7 are Sunday). Each field takes ``*``, a value, a range ``a-b``, a step
``*/n`` / ``a-b/n`` / ``a/n``, or a comma list of these. Macros: ``@hourly``, ``@daily``
(``@midnight``), ``@weekly``, ``@monthly``, ``@yearly`` (``@annually``). As in Vixie cron, when
both day fields are restricted (neither starts with ``*``) a day matches if *either* matches.

Times are local wall-clock times in the schedule's zone:

* a local time that does not exist (spring forward, e.g. 02:30 on the night clocks jump from
  02:00 to 03:00) fires at the first valid instant after the gap (03:00), once, even when several
  scheduled times fall in the gap;
* a local time that happens twice (fall back) fires once, at its first occurrence (the earlier,
  summer-time instant). So ``0 * * * *`` fires at 01:00 summer time and next at 02:00 winter time.
"""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from legato.sel.lib_time import resolve_local, zone

_MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_abbr) if name}
_DAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_FIELDS: tuple[tuple[str, int, int, dict[str, int] | None], ...] = (
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day of month", 1, 31, None),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
_LAST_MINUTE = time(23, 59)
_SEARCH_DAYS = 366 * 12  # Feb 29 on a given weekday recurs within 28 years; plain Feb 29 within 8


def _value(token: str, name: str, lo: int, hi: int, names: dict[str, int] | None) -> int:
    if token.isdigit() and len(token) <= 4:
        number = int(token)
    elif names is not None and token.lower() in names:
        number = names[token.lower()]
    else:
        expected = f"a number {lo}-{hi}" + (
            " or a name like " + ", ".join(list(names)[:3]).upper() if names else ""
        )
        raise ValueError(f"{name} field: expected {expected}, got {token!r}")
    if not lo <= number <= hi:
        raise ValueError(f"{name} field: {number} is out of range {lo}-{hi}")
    return number


def _field(text: str, name: str, lo: int, hi: int, names: dict[str, int] | None) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise ValueError(f"{name} field: empty item in {text!r}")
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or len(step_text) > 4 or int(step_text) == 0:
                raise ValueError(f"{name} field: step must be a number >= 1, got {step_text!r}")
            step = int(step_text)
        if base == "*":
            start, end = lo, hi
        elif "-" in base:
            first, _, last = base.partition("-")
            start = _value(first, name, lo, hi, names)
            end = _value(last, name, lo, hi, names)
            if start > end:
                raise ValueError(f"{name} field: range {base!r} runs backwards")
        else:
            start = _value(base, name, lo, hi, names)
            # 'a/n' runs to the field's end; for days of the week that is Saturday (7 only names Sunday)
            end = (6 if name == "day of week" else hi) if slash else start
        values.update(range(start, end + 1, step))
    return frozenset(values)


class CronSchedule:
    """A parsed cron schedule bound to a time zone; build with :meth:`parse`."""

    __slots__ = (
        "_dom_star",
        "_dow_star",
        "days",
        "expression",
        "hours",
        "minutes",
        "months",
        "timezone",
        "tz",
        "weekdays",
    )

    def __init__(
        self, expression: str, timezone: str, fields: list[frozenset[int]], dom_star: bool, dow_star: bool
    ) -> None:
        """Use :meth:`parse`."""
        self.expression = expression
        self.timezone = timezone
        self.tz = zone(timezone)
        self.minutes = sorted(fields[0])
        self.hours = sorted(fields[1])
        self.days = fields[2]
        self.months = fields[3]
        self.weekdays = frozenset(d % 7 for d in fields[4])  # 7 is Sunday too
        self._dom_star = dom_star
        self._dow_star = dow_star

    @classmethod
    def parse(cls, expr: str, timezone: str = "UTC") -> CronSchedule:
        """Parse ``expr``; raises ValueError naming the field and the reason."""
        if not isinstance(expr, str):
            raise ValueError(f"a cron expression must be text, got {type(expr).__name__}")
        if len(expr) > 256:
            raise ValueError("cron expression longer than 256 characters")
        text = expr.strip()
        if text.startswith("@"):
            if text.lower() not in _MACROS:
                raise ValueError(f"unknown macro {text!r} (use {', '.join(_MACROS)})")
            text = _MACROS[text.lower()]
        parts = text.split()
        if len(parts) != 5:
            raise ValueError(
                f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(parts)} in {expr!r}"
            )
        fields = [
            _field(part, name, lo, hi, names)
            for part, (name, lo, hi, names) in zip(parts, _FIELDS, strict=True)
        ]
        schedule = cls(expr, timezone, fields, parts[2].startswith("*"), parts[4].startswith("*"))
        if schedule._dow_star:
            schedule._check_reachable(parts)
        return schedule

    def _check_reachable(self, parts: list[str]) -> None:
        """A day-of-month that no listed month has (``0 0 31 2 *``) would never fire: refuse it."""
        for month in self.months:
            longest = calendar.monthrange(2000, month)[1]  # 2000 is a leap year: Feb has 29 days
            if any(d <= longest for d in self.days):
                return
        raise ValueError(
            f"day of month {parts[2]!r} never occurs in month {parts[3]!r}: the schedule would never fire"
        )

    def _day_matches(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        dom = day.day in self.days
        dow = (day.weekday() + 1) % 7 in self.weekdays  # cron counts Sunday as 0
        if self._dom_star or self._dow_star:
            return dom and dow  # a '*'-led field still filters: '*/2' is every other day
        return dom or dow

    def next_after(self, dt: datetime) -> datetime:
        """The first fire time strictly after ``dt`` (aware), as an aware UTC datetime."""
        if dt.tzinfo is None or dt.utcoffset() is None:
            raise ValueError("next_after needs an aware datetime")
        after = dt.astimezone(UTC)
        tz: tzinfo = self.tz
        local = after.astimezone(tz)
        # A wall time w resolves to an instant <= w - (the smallest UTC offset in force around then), so a
        # candidate at or before `floor` cannot be after `dt` (offsets 3h either side cover a DST change)
        # and is skipped without resolving it.
        offsets = [
            (after + timedelta(hours=h)).astimezone(tz).utcoffset() or timedelta(0) for h in (-3, 0, 3)
        ]
        floor = (after + min(offsets)).replace(tzinfo=None)
        day = local.date() - timedelta(days=1)
        for _ in range(_SEARCH_DAYS):
            if self._day_matches(day) and datetime.combine(day, _LAST_MINUTE) > floor:
                for hour in self.hours:
                    if datetime.combine(day, time(hour, 59)) <= floor:
                        continue
                    for minute in self.minutes:
                        naive = datetime.combine(day, time(hour, minute))
                        if naive <= floor:
                            continue
                        fire = resolve_local(naive, tz).astimezone(UTC)
                        if fire > after:
                            return fire
            day += timedelta(days=1)
        raise ValueError(f"cron {self.expression!r} has no fire time within {_SEARCH_DAYS // 366} years")

    def fires_between(self, start: datetime, end: datetime, limit: int = 1000) -> list[datetime]:
        """Fire times ``t`` with ``start < t <= end`` (UTC, ascending), at most ``limit`` of them."""
        out: list[datetime] = []
        current = start
        while len(out) < limit:
            fire = self.next_after(current)
            if fire > end.astimezone(UTC):
                break
            out.append(fire)
            current = fire
        return out

    def __repr__(self) -> str:
        return f"CronSchedule({self.expression!r}, {self.timezone!r})"
