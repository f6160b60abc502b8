"""``foreach.py --tables`` prints what Postgres wrote per iteration, table by table, from two readings of
``pg_stat_user_tables`` and ``pg_stat_wal``; ``profile.py --saturated 0`` skips the saturated phase and
then needs the paced phase's rate given."""

from __future__ import annotations

import sys

import pytest

from tests.support.bench import load_bench_module


def test_table_stats_print_each_written_table_per_iteration(capsys: pytest.CaptureFixture[str]) -> None:
    foreach = load_bench_module("foreach.py")
    before = ({"step_run": (10, 0, 0, 0), "workflow": (1, 5, 5, 0), "timer": (3, 3, 0, 3)}, 1_000)
    after = (
        {
            "step_run": (210, 400, 200, 0),
            "workflow": (1, 5, 5, 0),  # untouched: not printed
            "timer": (3, 3, 0, 3),
            "outbox": (200, 0, 0, 190),  # new since the first reading: counted from zero
        },
        1_000 + 200 * 5 * 1024,
    )
    assert foreach.rows_inserted(before, after) == 400  # 200 step rows, 200 outbox rows
    foreach.print_table_stats(before, after, 200)
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in out[1:-1]}
    assert set(rows) == {"step_run", "outbox"}
    assert rows["step_run"] == ["1.00", "/", "2.00", "(", "1.00)", "/", "0.00"]
    assert rows["outbox"] == ["1.00", "/", "0.00", "(", "0.00)", "/", "0.95"]
    assert out[-1].strip() == "WAL written: 5.0 KiB per iteration"


def test_profile_without_saturated_phase_needs_a_paced_rate(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = load_bench_module("profile.py")
    monkeypatch.setattr(sys, "argv", ["profile.py", "--saturated", "0"])
    with pytest.raises(SystemExit) as exit_:
        profile.main()  # refused before any server starts
    assert exit_.value.code == 2
    assert "give --rate too" in capsys.readouterr().err
