"""The cron loop's clock: the wall clock, or the time a test writes in a file (re-read at each call)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from legato.trigger.cron import cron_clock


def test_without_a_file_the_clock_is_the_wall_clock_in_utc() -> None:
    before = datetime.now(UTC)
    now = cron_clock("")()
    assert now.tzinfo is not None and before <= now <= datetime.now(UTC)


def test_a_clock_file_is_reread_at_each_call_and_naive_times_are_utc(tmp_path: Path) -> None:
    path = tmp_path / "clock"
    clock = cron_clock(str(path))
    path.write_text("2026-06-01T00:00:30+00:00")
    assert clock() == datetime(2026, 6, 1, 0, 0, 30, tzinfo=UTC)
    path.write_text("2026-06-01T00:05:00\n")
    assert clock() == datetime(2026, 6, 1, 0, 5, tzinfo=UTC)
