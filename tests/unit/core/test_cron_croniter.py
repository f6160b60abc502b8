"""The home-made cron parser agrees with an independent, maintained implementation (``croniter``) on random
expressions in zones without daylight-saving changes (UTC, fixed offsets including half and quarter hours).
The DST gap/overlap semantics are ours and tested explicitly in ``test_cron.py``."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from croniter import croniter
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from legato.core import CronSchedule
from legato.sel.lib_time import resolve_local

# Zones that have had no DST change since 2000 (the start times drawn below).
ZONES = ["UTC", "Asia/Tokyo", "Asia/Kolkata", "Asia/Kathmandu", "Asia/Shanghai", "Africa/Nairobi"]
FIELDS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


@st.composite
def item(draw: st.DrawFn, lo: int, hi: int) -> str:
    kind = draw(st.sampled_from(["value", "range", "range_step", "start_step"]))
    value = draw(st.integers(lo, hi))
    # a-a is a one-value range; croniter 7 reads it as '*' (0-0 in the hour field fires every hour):
    # a croniter bug, ours is right (test_cron.py::test_one_value_range), so ranges here have a < b
    a = draw(st.integers(lo, hi - 1))
    b = draw(st.integers(a + 1, hi))
    n = draw(st.integers(1, max(1, hi - lo)))
    return {
        "value": f"{value}",
        "range": f"{a}-{b}",
        "range_step": f"{a}-{b}/{n}",
        "start_step": f"{a}/{n}",
    }[kind]


@st.composite
def field(draw: st.DrawFn, lo: int, hi: int) -> str:
    if draw(st.booleans()):
        return "*"
    if draw(st.booleans()):
        return f"*/{draw(st.integers(1, hi - lo))}"
    # a '*/n' inside a list ('1,*/2') is left out: whether it makes the field '*'-led is unspecified
    return ",".join(draw(st.lists(item(lo, hi), min_size=1, max_size=3)))


@st.composite
def expression(draw: st.DrawFn) -> str:
    parts = [draw(field(lo, hi)) for lo, hi in FIELDS]
    # Vixie cron ANDs the day fields when either starts with '*' ('*/2' included); croniter 7 ORs them
    # when the '*'-led one is not a bare '*'. Ours follows Vixie (test_cron.py::test_star_step_day_field_
    # and_a_restricted_one), so a '*/n' day field is drawn only beside a bare '*'.
    if parts[2].startswith("*/") and parts[4] != "*":
        parts[2] = "*"
    if parts[4].startswith("*/") and parts[2] != "*":
        parts[4] = "*"
    return " ".join(parts)


start_times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1)).map(
    lambda d: d.replace(tzinfo=UTC)
)


@settings(max_examples=400, deadline=None)
@given(expr=expression(), zone=st.sampled_from(ZONES), start=start_times)
def test_fire_times_match_croniter(expr: str, zone: str, start: datetime) -> None:
    try:
        ours = CronSchedule.parse(expr, zone)
    except ValueError as exc:  # '0 0 31 2 *' never fires: refused (croniter would search forever)
        assert "never occurs" in str(exc)
        assume(False)
        return
    theirs = croniter(expr, start.astimezone(ours.tz))
    current = start
    for _ in range(5):
        current = ours.next_after(current)
        expected = theirs.get_next(datetime).astimezone(UTC)
        assert current == expected, (expr, zone, start)


@settings(max_examples=100, deadline=None)
@given(
    expr=st.sampled_from(["@hourly", "@daily", "@weekly", "@monthly", "@yearly"]),
    zone=st.sampled_from(ZONES),
    start=start_times,
)
def test_macros_match_croniter(expr: str, zone: str, start: datetime) -> None:
    ours = CronSchedule.parse(expr, zone)
    theirs = croniter(expr, start.astimezone(ours.tz))
    current = start
    for _ in range(3):
        current = ours.next_after(current)
        assert current == theirs.get_next(datetime).astimezone(UTC), (expr, zone, start)


def reference_next_after(schedule: CronSchedule, dt: datetime) -> datetime:
    """The parser's first, plain search (every candidate from 3 h of wall time earlier on, resolved):
    slow but obviously right; the fast search must agree with it, DST changes included."""
    after = dt.astimezone(UTC)
    local = after.astimezone(schedule.tz)
    floor = (local - timedelta(hours=3)).replace(tzinfo=None)
    day = local.date() - timedelta(days=1)
    for _ in range(366 * 12):
        if schedule._day_matches(day):
            for hour in schedule.hours:
                for minute in schedule.minutes:
                    naive = datetime.combine(day, time(hour, minute))
                    if naive < floor:
                        continue
                    fire = resolve_local(naive, schedule.tz).astimezone(UTC)
                    if fire > after:
                        return fire
        day += timedelta(days=1)
    raise AssertionError("no fire")


DST_ZONES = ["Europe/Paris", "America/New_York", "Australia/Lord_Howe", "America/Santiago", "Europe/London"]
# start times near the changes of 2026 (both ways), where a shortcut would go wrong
NEAR_CHANGES = st.sampled_from(
    [
        datetime(2026, 3, 8, 6, tzinfo=UTC),
        datetime(2026, 3, 29, 0, 30, tzinfo=UTC),
        datetime(2026, 10, 25, 0, 15, tzinfo=UTC),
        datetime(2026, 11, 1, 5, 30, tzinfo=UTC),
        datetime(2026, 4, 4, 15, tzinfo=UTC),
        datetime(2026, 10, 3, 15, 45, tzinfo=UTC),
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    expr=expression(),
    zone=st.sampled_from(DST_ZONES),
    base=NEAR_CHANGES,
    shift=st.integers(-240, 240),
)
def test_fast_search_matches_the_plain_one_across_dst(
    expr: str, zone: str, base: datetime, shift: int
) -> None:
    try:
        schedule = CronSchedule.parse(expr, zone)
    except ValueError:
        assume(False)
        return
    current = base + timedelta(minutes=shift)
    for _ in range(4):
        expected = reference_next_after(schedule, current)
        assert schedule.next_after(current) == expected, (expr, zone, current)
        current = expected
