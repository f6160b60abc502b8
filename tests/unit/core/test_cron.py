"""Cron schedules: fields, macros, steps, names, and daylight-saving changes both ways."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from legato.core import CronSchedule

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def fires(expr: str, start: datetime, count: int, tz: str = "UTC") -> list[datetime]:
    schedule = CronSchedule.parse(expr, tz)
    out = []
    for _ in range(count):
        start = schedule.next_after(start)
        out.append(start)
    return out


@pytest.mark.parametrize(
    ("expr", "start", "expected"),
    [
        ("@daily", utc(2026, 11, 8, 12), [utc(2026, 11, 9), utc(2026, 11, 10)]),
        ("@midnight", utc(2026, 11, 8, 0, 0), [utc(2026, 11, 9), utc(2026, 11, 10)]),
        ("@hourly", utc(2026, 11, 8, 12, 0), [utc(2026, 11, 8, 13), utc(2026, 11, 8, 14)]),
        ("@weekly", utc(2026, 11, 8, 12), [utc(2026, 11, 15), utc(2026, 11, 22)]),
        ("@monthly", utc(2026, 11, 8), [utc(2026, 12, 1), utc(2027, 1, 1)]),
        ("@yearly", utc(2026, 11, 8), [utc(2027, 1, 1), utc(2028, 1, 1)]),
        (
            "*/20 * * * *",
            utc(2026, 11, 8, 12, 5),
            [utc(2026, 11, 8, 12, 20), utc(2026, 11, 8, 12, 40), utc(2026, 11, 8, 13)],
        ),
        (
            "5-15/5 9 * * *",
            utc(2026, 11, 8),
            [utc(2026, 11, 8, 9, 5), utc(2026, 11, 8, 9, 10), utc(2026, 11, 8, 9, 15)],
        ),
        (
            "0 9-17/4 * * *",
            utc(2026, 11, 8),
            [utc(2026, 11, 8, 9), utc(2026, 11, 8, 13), utc(2026, 11, 8, 17)],
        ),
        ("30 1/12 * * *", utc(2026, 11, 8), [utc(2026, 11, 8, 1, 30), utc(2026, 11, 8, 13, 30)]),
        ("0 0 * * MON-FRI", utc(2026, 11, 6, 12), [utc(2026, 11, 9), utc(2026, 11, 10)]),  # Fri noon -> Mon
        ("0 0 * * 0", utc(2026, 11, 8, 12), [utc(2026, 11, 15)]),
        ("0 0 * * 7", utc(2026, 11, 8, 12), [utc(2026, 11, 15)]),  # 7 is Sunday too
        ("0 0 1 jan,Jul *", utc(2026, 11, 8), [utc(2027, 1, 1), utc(2027, 7, 1)]),
        (
            "0 0 13 * FRI",
            utc(2026, 11, 1),
            [utc(2026, 11, 6), utc(2026, 11, 13), utc(2026, 11, 20)],
        ),  # either day field
        ("0 0 29 2 *", utc(2026, 1, 1), [utc(2028, 2, 29), utc(2032, 2, 29)]),
        ("0 0 31 * *", utc(2026, 11, 8), [utc(2026, 12, 31), utc(2027, 1, 31), utc(2027, 3, 31)]),
        ("59 23 31 12 *", utc(2026, 12, 31, 23, 59), [utc(2027, 12, 31, 23, 59)]),
    ],
)
def test_schedules(expr: str, start: datetime, expected: list[datetime]) -> None:
    assert fires(expr, start, len(expected)) == expected


def test_next_after_is_strictly_after_and_in_utc() -> None:
    schedule = CronSchedule.parse("0 2 * * *", "Europe/Paris")
    fire = schedule.next_after(datetime(2026, 11, 8, 2, 0, tzinfo=PARIS))
    assert fire == datetime(2026, 11, 9, 2, 0, tzinfo=PARIS)
    assert fire.tzinfo is UTC


def test_spring_forward_fires_once_at_the_end_of_the_gap() -> None:
    # Paris 2026-03-29: 02:00 CET -> 03:00 CEST; 02:30 does not exist
    assert fires("30 2 * * *", utc(2026, 3, 28, 12), 2, "Europe/Paris") == [
        utc(2026, 3, 29, 1, 0),
        utc(2026, 3, 30, 0, 30),
    ]
    # all four quarter hours of the missing hour collapse into one fire at 03:00
    got = fires("*/15 2 * * *", utc(2026, 3, 28, 12), 2, "Europe/Paris")
    assert got == [utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 0)]


def test_fall_back_fires_once_at_the_first_occurrence() -> None:
    # Paris 2026-10-25: 03:00 CEST -> 02:00 CET; 02:30 happens twice
    assert fires("30 2 * * *", utc(2026, 10, 24, 12), 2, "Europe/Paris") == [
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 26, 1, 30),
    ]


def test_hourly_across_both_changes_in_new_york() -> None:
    hourly = CronSchedule.parse("0 * * * *", "America/New_York")
    fall = hourly.fires_between(
        datetime(2026, 11, 1, 0, 0, tzinfo=NEW_YORK) - timedelta(minutes=1),
        datetime(2026, 11, 1, 23, 0, tzinfo=NEW_YORK),
    )
    assert len(fall) == 24  # a 25-hour day, the repeated 01:00 fires once
    assert utc(2026, 11, 1, 5) in fall and utc(2026, 11, 1, 6) not in fall and utc(2026, 11, 1, 7) in fall
    spring = hourly.fires_between(
        datetime(2026, 3, 8, 0, 0, tzinfo=NEW_YORK) - timedelta(minutes=1),
        datetime(2026, 3, 8, 23, 0, tzinfo=NEW_YORK),
    )
    assert len(spring) == 23  # a 23-hour day: no 02:00
    assert [f.astimezone(NEW_YORK).hour for f in spring[:4]] == [0, 1, 3, 4]


def test_fires_between_is_bounded_by_end_and_limit() -> None:
    schedule = CronSchedule.parse("* * * * *")
    assert len(schedule.fires_between(utc(2026, 1, 1), utc(2026, 1, 1, 1))) == 60
    assert len(schedule.fires_between(utc(2026, 1, 1), utc(2026, 1, 2), limit=10)) == 10
    assert schedule.fires_between(utc(2026, 1, 1), utc(2026, 1, 1)) == []


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        CronSchedule.parse("@daily").next_after(datetime(2026, 1, 1))


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("60 * * * *", "minute field: 60 is out of range 0-59"),
        ("* 24 * * *", "hour field: 24 is out of range 0-23"),
        ("* * 0 * *", "day of month field: 0 is out of range 1-31"),
        ("* * * 13 *", "month field: 13 is out of range 1-12"),
        ("* * * * 8", "day of week field: 8 is out of range 0-7"),
        ("*/0 * * * *", "minute field: step must be a number >= 1, got '0'"),
        ("5-1 * * * *", "minute field: range '5-1' runs backwards"),
        ("a * * * *", "minute field: expected a number 0-59, got 'a'"),
        ("* * * FOO *", "month field: expected a number 1-12 or a name like JAN"),
        ("1,,2 * * * *", "minute field: empty item in '1,,2'"),
        ("* * * *", "expected 5 fields (minute hour day-of-month month day-of-week), got 4"),
        ("* * * * * *", "got 6"),
        ("", "got 0"),
        ("@often", "unknown macro '@often'"),
        ("0 0 30 2 *", "day of month '30' never occurs in month '2'"),
        ("0 0 31 4,6,9,11 *", "never occurs"),
        ("x" * 300, "longer than 256"),
    ],
)
def test_invalid_schedules_name_the_field(expr: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        CronSchedule.parse(expr)
    assert message in str(info.value)


def test_unknown_time_zones_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        CronSchedule.parse("@daily", "Mars/Olympus")


def test_weekday_restriction_makes_an_impossible_day_reachable() -> None:
    # day 31 of February never happens, but with a weekday the OR rule still fires on Mondays in February
    schedule = CronSchedule.parse("0 0 31 2 MON")
    assert schedule.next_after(utc(2026, 1, 1)) == utc(2026, 2, 2)


def test_one_value_range_is_that_value() -> None:
    # croniter 7 reads '9-9' as '*' (fires every hour); the range holds one value
    assert fires("0 9-9 * * *", utc(2026, 11, 8), 2) == [utc(2026, 11, 8, 9), utc(2026, 11, 9, 9)]


def test_star_step_day_field_still_filters() -> None:
    # found by the croniter cross-check: '*/2' used to be taken for '*' and fired every day
    assert fires("0 0 */2 * *", utc(2001, 1, 1), 3) == [utc(2001, 1, 3), utc(2001, 1, 5), utc(2001, 1, 7)]
    # 2001-01-01 is a Monday; */2 is Sun, Tue, Thu, Sat
    assert fires("0 0 * * */2", utc(2001, 1, 1), 3) == [utc(2001, 1, 2), utc(2001, 1, 4), utc(2001, 1, 6)]


def test_star_step_day_field_and_a_restricted_one() -> None:
    # Vixie cron: a day field starting with '*' makes the two day fields AND (croniter 7 ORs them):
    # odd days of the month that are Mondays
    assert fires("0 0 */2 * 1", utc(2001, 1, 1), 3) == [utc(2001, 1, 15), utc(2001, 1, 29), utc(2001, 2, 5)]


def test_open_step_in_day_of_week_ends_on_saturday() -> None:
    # found by the croniter cross-check: '5/2' is Friday only (then the next week), not Friday and Sunday
    assert fires("0 0 * * 5/2", utc(2000, 1, 1), 2) == [utc(2000, 1, 7), utc(2000, 1, 14)]
