"""The SEL function library: dates and time zones, strings, collections, math, JSON."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from legato.sel import FUNCTIONS, SelEvalError, SelLimitError, compile_expression

CLOCK = datetime(2026, 11, 8, 23, 30, tzinfo=UTC)


def ev(source: str, **params: Any) -> Any:
    return compile_expression(source).evaluate({"params": params}, now=CLOCK)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("date('2026-11-01')", date(2026, 11, 1)),
        ("date(2026, 2, 28)", date(2026, 2, 28)),
        ("date(datetime('2026-11-01T23:30:00Z'), tz='Asia/Tokyo')", date(2026, 11, 2)),
        ("date('2026-11-01T23:30:00+00:00')", date(2026, 11, 1)),
        ("datetime('2026-11-01T02:00:00Z')", datetime(2026, 11, 1, 2, tzinfo=UTC)),
        ("datetime('2026-11-01T02:00:00')", datetime(2026, 11, 1, 2, tzinfo=UTC)),
        ("datetime(2026, 11, 1, 2, 30, tz='Europe/Paris')", datetime(2026, 11, 1, 1, 30, tzinfo=UTC)),
        ("datetime(date('2026-07-01'), 'Europe/Paris')", datetime(2026, 6, 30, 22, tzinfo=UTC)),
        ("today()", date(2026, 11, 8)),
        ("today('Europe/Paris')", date(2026, 11, 9)),
        ("now()", CLOCK),
        ("add_months(date('2026-01-31'), 1)", date(2026, 2, 28)),
        ("add_months(date('2024-01-31'), 1)", date(2024, 2, 29)),
        ("add_months(date('2026-03-15'), -3)", date(2025, 12, 15)),
        ("add_years(date('2024-02-29'), 1)", date(2025, 2, 28)),
        ("add_days(date('2026-12-31'), 1)", date(2027, 1, 1)),
        ("start_of_month(date('2026-11-18'))", date(2026, 11, 1)),
        ("end_of_month(date('2026-02-10'))", date(2026, 2, 28)),
        ("start_of_week(date('2026-11-08'))", date(2026, 11, 2)),
        ("weekday(date('2026-11-08'))", 6),
        ("[year(params.d), month(params.d), day(params.d)]", [2026, 11, 8]),
        ("days_between(date('2026-11-01'), date('2026-11-08'))", 7),
        ("format_date(date('2026-11-08'), '%Y%m%d')", "20261108"),
        ("format_date(datetime('2026-11-08T05:06:07Z'), '%H:%M:%S %Z')", "05:06:07 UTC"),
        ("parse_date('08/11/2026', '%d/%m/%Y')", date(2026, 11, 8)),
        (
            "parse_datetime('2026-11-08 10:00', '%Y-%m-%d %H:%M', 'Europe/Paris')",
            datetime(2026, 11, 8, 9, tzinfo=UTC),
        ),
        ("timestamp(datetime('1970-01-02T00:00:00Z'))", 86400.0),
        ("from_timestamp(86400)", datetime(1970, 1, 2, tzinfo=UTC)),
        ("timezone(to_timezone(now(), 'Asia/Tokyo'))", "Asia/Tokyo"),
        ("hour(to_timezone(now(), 'Asia/Tokyo'))", 8),
        ("total_seconds(minutes(2))", 120.0),
        ("format_duration(days(1) + minutes(1))", "1d1m"),
        ("duration('250ms')", timedelta(milliseconds=250)),
        ("weeks(1) == days(7)", True),
        ("start_of_day(datetime('2026-11-08T15:00:00Z'))", datetime(2026, 11, 8, tzinfo=UTC)),
    ],
)
def test_dates_and_durations(source: str, expected: Any) -> None:
    assert ev(source, d=date(2026, 11, 8)) == expected


def test_local_times_in_a_dst_gap_move_past_the_gap() -> None:
    # 2026-03-29 02:30 does not exist in Paris (02:00 -> 03:00)
    value = ev("datetime(2026, 3, 29, 2, 30, tz='Europe/Paris')")
    assert value == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert value.astimezone(ZoneInfo("Europe/Paris")).hour == 3


def test_ambiguous_local_times_take_the_first_occurrence() -> None:
    # 2026-10-25 02:30 happens twice in Paris; the first is still summer time (+02:00)
    value = ev("datetime(2026, 10, 25, 2, 30, tz='Europe/Paris')")
    assert value.astimezone(UTC) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)


def test_datetimes_compare_as_instants_even_on_a_fall_back_night() -> None:
    first = "datetime('2026-10-25T02:30:00+02:00', 'Europe/Paris')"
    second = "datetime('2026-10-25T02:30:00+01:00', 'Europe/Paris')"
    assert ev(f"{first} != {second}") is True
    assert ev(f"{first} < {second}") is True
    assert ev(f"sorted([{second}, {first}])[0] == {first}") is True
    assert ev(f"max({first}, {second}) == {second}") is True


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("now('Mars/Olympus')", "unknown time zone 'Mars/Olympus'"),
        ("now('../../etc/passwd')", "invalid time zone"),
        ("format_date(today(), '%1000000Y')", "unsupported directive"),
        ("format_date(today(), '%Q')", "unsupported directive"),
        ("date(2026, 13, 1)", "month must be in 1..12"),
        ("days('x')", "amount must be a number"),
        ("days(10**20)", "duration out of range"),
        ("date('9999-12-31') + days(1)", "date out of range"),
        ("date_range(date('2026-01-01'), date('2026-01-02'), hours(12))", "steps by whole days"),
        ("date_range(date('2026-01-01'), date('2026-01-02'), days(0))", "step must not be zero"),
        ("date_range(date('2026-01-01'), now())", "start is a date but end is a datetime"),
        ("hour(date('2026-01-01'))", "expected a datetime"),
        ("parse_date('x', '%Y')", "parse_date()"),
        ("duration('1x')", "invalid duration"),
    ],
)
def test_date_errors(source: str, message: str) -> None:
    with pytest.raises(SelEvalError) as info:
        ev(source)
    assert message in info.value.reason


def test_datetime_ranges_step_in_exact_time_across_dst() -> None:
    value = ev(
        "date_range(datetime('2026-03-29T00:00:00', 'Europe/Paris'), datetime('2026-03-29T06:00:00', 'Europe/Paris'), hours(2))"
    )
    assert [d.hour for d in value] == [
        0,
        3,
        5,
    ]  # 02:00 local does not exist: 2 real hours after 00:00 is 03:00
    assert len(value) == 3


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("upper('abc')", "ABC"),
        ("lower('ABC')", "abc"),
        ("title('hello world')", "Hello World"),
        ("capitalize('hELLO')", "Hello"),
        ("strip('  x  ')", "x"),
        ("strip('xxaxx', 'x')", "a"),
        ("lstrip('  x ')", "x "),
        ("rstrip(' x  ')", " x"),
        ("split('a b  c')", ["a", "b", "c"]),
        ("split('a,b,c', ',', 1)", ["a", "b,c"]),
        ("lines('a\\nb\\r\\nc')", ["a", "b", "c"]),
        ("join(['a', 1, true, null], '-')", "a-1-true-null"),
        ("replace('aaa', 'a', 'bb')", "bbbbbb"),
        ("replace('aaa', 'a', 'b', 2)", "bba"),
        ("startswith('legato', 'leg')", True),
        ("endswith('legato', 'ato')", True),
        ("find('legato', 'g')", 2),
        ("find('legato', 'z')", -1),
        ("pad_left('7', 3, '0')", "007"),
        ("pad_right('7', 3)", "7  "),
        ("zfill('-7', 4)", "-007"),
        ("repeat('ab', 2)", "abab"),
        ("contains('legato', 'gat')", True),
        ('shell_quote("it\'s")', "'it'\"'\"'s'"),
        ("shell_quote('plain')", "plain"),
        ("url_encode('a b/ü')", "a%20b%2F%C3%BC"),
        ("sha256('')", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        ("format('{} + {} = {total}', 1, 2, total=3)", "1 + 2 = 3"),
        ("format('{1}{0}', 'a', 'b')", "ba"),
        ("format('{:05.1f}|{:>4}|{:,}', 3.14159, 'x', 1234567)", "003.1|   x|1,234,567"),
        ("format('{:%Y/%m}', date('2026-11-08'))", "2026/11"),
        ("format('{{literal}} {}', 1)", "{literal} 1"),
        ("str(1.5)", "1.5"),
        ("str(date('2026-11-08'))", "2026-11-08"),
        ("str({'a': [1, 'x']})", '{"a":[1,"x"]}'),
        ("int('42')", 42),
        ("int('ff', 16)", 255),
        ("int(3.9)", 3),
        ("float('1e3')", 1000.0),
        ("bool('false')", False),
        ("bool('yes')", True),
        ("bool([])", False),
        ("type(date('2026-01-01'))", "date"),
        ("type(range(3))", "range"),
    ],
)
def test_strings_and_conversions(source: str, expected: Any) -> None:
    assert ev(source) == expected


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("format('{0.__class__}', 1)", "unsupported field"),
        ("format('{!r}', 1)", "unsupported field"),
        ("format('{:1000000}', 1)", "invalid format spec"),
        ("format('{}')", "not enough arguments"),
        ("format('{', 1)", "unclosed '{'"),
        ("format('}', 1)", "single '}'"),
        ("split('abc', '')", "sep must not be empty"),
        ("pad_left('x', 3, 'ab')", "fill must be one character"),
        ("bool('maybe')", "invalid bool"),
        ("upper(1)", "text must be a string"),
    ],
)
def test_string_errors(source: str, message: str) -> None:
    with pytest.raises(SelEvalError) as info:
        ev(source)
    assert message in info.value.reason


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("len([1, 2])", 2),
        ("len({'a': 1})", 1),
        ("len('héllo')", 5),
        ("len(range(10**18))", 10**18),
        ("sorted([3, 1, 2])", [1, 2, 3]),
        ("sorted(['b', 'a'], reverse=true)", ["b", "a"]),
        ("sorted([date('2026-01-02'), date('2026-01-01')])", [date(2026, 1, 1), date(2026, 1, 2)]),
        ("sort_by([{'n': 2}, {'n': 1}], 'n')", [{"n": 1}, {"n": 2}]),
        ("reversed([1, 2, 3])", [3, 2, 1]),
        ("reversed(range(3))", range(2, -1, -1)),
        ("sum([1, 2, 3])", 6),
        ("sum(range(101))", 5050),
        ("sum([hours(1), minutes(30)])", timedelta(minutes=90)),
        ("min([3, 1, 2])", 1),
        ("max(3, 1, 2)", 3),
        ("max(range(10))", 9),
        ("min(['b', 'a'])", "a"),
        ("any([0, '', 1])", True),
        ("all([1, 'x', [0]])", True),
        ("unique([1, 2, 1, 3, 2])", [1, 2, 3]),
        ("flatten([[1, 2], [3], 4])", [1, 2, 3, 4]),
        ("zip([1, 2, 3], ['a', 'b'])", [(1, "a"), (2, "b")]),
        ("enumerate(['a', 'b'], 1)", [(1, "a"), (2, "b")]),
        ("chunk(range(5), 2)", [[0, 1], [2, 3], [4]]),
        ("first([])", None),
        ("first([], 'none')", "none"),
        ("last([1, 2])", 2),
        ("coalesce(null, null, 3)", 3),
        ("count([1, 1, 2], 1)", 2),
        ("count('banana', 'an')", 2),
        ("index([5, 6], 6)", 1),
        ("keys({'a': 1, 'b': 2})", ["a", "b"]),
        ("values({'a': 1, 'b': 2})", [1, 2]),
        ("items({'a': 1})", [("a", 1)]),
        ("get({'a': 1}, 'a')", 1),
        ("get({'a': 1}, 'b', 0)", 0),
        ("get([1, 2], 5, 'x')", "x"),
        ("has({'a': null}, 'a')", True),
        ("has([1, 2], -2)", True),
        ("has({1, 2}, 3)", False),
        ("merge({'a': 1, 'b': 1}, {'b': 2})", {"a": 1, "b": 2}),
        ("dict([['a', 1], ['b', 2]])", {"a": 1, "b": 2}),
        ("list('ab')", ["a", "b"]),
        ("list({'z': 1})", ["z"]),
        ("list(range(3))", [0, 1, 2]),
        ("set([1, 1, 2])", {1, 2}),
        ("range(2, 10, 3)", range(2, 10, 3)),
    ],
)
def test_collections(source: str, expected: Any) -> None:
    assert ev(source) == expected


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("sorted([1, 'a'])", "cannot sort items of mixed or unordered types"),
        ("sorted([[1], [2]])", "cannot sort"),
        ("sum(['a'])", "items must all be numbers or all durations"),
        ("min([])", "empty list"),
        ("index([1], 2)", "item not found"),
        ("unique([[1]])", "must be a scalar"),
        ("chunk([1], 0)", "size must be >= 1"),
        ("dict([1])", "expected [key, value] pairs"),
        ("dict([[1, 2]])", "map keys must be strings"),
        ("range(1, 2, 0)", "step must not be zero"),
        ("range('a')", "must be an int"),
        ("keys([1])", "expected a map"),
    ],
)
def test_collection_errors(source: str, message: str) -> None:
    with pytest.raises(SelEvalError) as info:
        ev(source)
    assert message in info.value.reason


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("abs(-2)", 2),
        ("abs(-hours(1))", timedelta(hours=1)),
        ("round(2.5)", 2),
        ("round(2.675, 2)", 2.67),
        ("floor(-1.5)", -2),
        ("ceil(1.2)", 2),
        ("sqrt(16)", 4.0),
        ("log(8, 2)", 3.0),
        ("log10(1000)", 3.0),
        ("exp(0)", 1.0),
        ("pow(2, 10)", 1024),
        ("clamp(15, 0, 10)", 10),
        (
            "json({'a': [1, 2.5, null, true], 'd': date('2026-01-01'), 'h': hours(1)})",
            '{"a":[1,2.5,null,true],"d":"2026-01-01","h":3600}',
        ),
        ("json([1], indent=2)", "[\n  1\n]"),
        ('parse_json(\'{"a": [1, {"b": null}]}\')', {"a": [1, {"b": None}]}),
    ],
)
def test_math_and_json(source: str, expected: Any) -> None:
    assert ev(source) == expected


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("sqrt(-1)", "math domain error"),
        ("exp(10000)", "math range error"),
        ("round(float('inf'))", "cannot round inf"),
        ("round(5, -10**18)", "ndigits must be between"),
        ("floor(float('nan'))", "cannot convert nan"),
        ("json(float('nan'))", "cannot write nan as JSON"),
        ("parse_json('{')", "invalid JSON"),
        ("clamp(1, 'a', 2)", "one ordered kind"),
    ],
)
def test_math_and_json_errors(source: str, message: str) -> None:
    with pytest.raises(SelEvalError) as info:
        ev(source)
    assert message in info.value.reason


def test_parse_json_refuses_integers_beyond_the_bit_limit() -> None:
    with pytest.raises(SelLimitError):
        ev("parse_json('[' + '9' * 1300 + ']')")


def test_every_library_function_has_a_docstring() -> None:
    missing = [name for name, fn in FUNCTIONS.items() if not fn.summary]
    assert missing == []
