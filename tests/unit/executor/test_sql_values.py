"""JSON values bound to SQL placeholders, column values back to JSON, command tags, the size cap."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from legato.executor.runners.sql import cap_rows
from legato.executor.sql.values import bind_value, json_cell, rows_affected


@pytest.mark.parametrize(
    ("pg_type", "value", "bound"),
    [
        ("date", "2026-01-02", date(2026, 1, 2)),
        ("timestamptz", "2026-01-02T03:04:05Z", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("int4", "42", 42),
        ("int8", 7.0, 7),
        ("numeric", 10.5, Decimal("10.5")),
        ("numeric", "1e3", Decimal("1e3")),
        ("float8", 3, 3.0),
        ("text", 5, "5"),
        ("text", True, "true"),
        ("text", "'; DROP TABLE x; --", "'; DROP TABLE x; --"),
        ("jsonb", {"a": [1, None]}, '{"a":[1,null]}'),
        ("_int4", ["1", 2], [1, 2]),
        ("interval", 90, timedelta(seconds=90)),
        ("bool", "TRUE", True),
        ("uuid", "12345678-1234-5678-1234-567812345678", uuid.UUID("12345678-1234-5678-1234-567812345678")),
        ("date", None, None),
    ],
)
def test_bind_value(pg_type: str, value: object, bound: object) -> None:
    assert bind_value(pg_type, value) == bound  # type: ignore[arg-type]


@pytest.mark.parametrize(("pg_type", "value"), [("int4", 1.5), ("date", "tomorrow"), ("bool", "yes")])
def test_bind_value_refuses_what_does_not_fit(pg_type: str, value: object) -> None:
    with pytest.raises(ValueError):
        bind_value(pg_type, value)  # type: ignore[arg-type]


def test_json_cell() -> None:
    assert json_cell(Decimal("14.50")) == "14.50"
    assert json_cell(date(2026, 1, 2)) == "2026-01-02"
    assert json_cell(b"\x00\x01") == "AAE="
    assert json_cell(timedelta(minutes=1)) == 60.0
    assert json_cell(float("nan")) == "nan"
    assert json_cell([Decimal(1), {"k": date(2026, 1, 1)}]) == ["1", {"k": "2026-01-01"}]
    assert json_cell(uuid.UUID(int=0)) == "00000000-0000-0000-0000-000000000000"


@pytest.mark.parametrize(
    ("status", "count"),
    [("INSERT 0 3", 3), ("UPDATE 2", 2), ("DELETE 0", 0), ("SELECT 5", 0), ("CREATE TABLE", 0), ("", 0)],
)
def test_rows_affected(status: str, count: int) -> None:
    assert rows_affected(status) == count


def test_cap_rows_keeps_the_leading_rows_that_fit() -> None:
    rows = [{"v": "x" * 10} for _ in range(10)]
    kept, truncated = cap_rows(rows, 60)
    assert (len(kept), truncated) == (3, True)
    assert cap_rows(rows, 10_000) == (rows, False)
