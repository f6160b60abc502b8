"""``make bench``'s performance table reads each figure from what its bench prints: these are the lines
the benches print (taken from a run), so a changed print cannot silently empty the table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def table_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_table", ROOT / "bench" / "table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


PROFILE = """
== auth off ==
critical path of 30 unloaded one-noop-step runs, one at a time (ms):
  hop                                     p50      p99
  round trip: sent -> run ended         21.66    52.22
  trigger -> step start                 12.00    20.00
CPU per run at saturation: 500 runs in 1.6 s (312 runs/s), all processes 5.78 ms CPU per run
critical path of 510 runs started at 170/s (half of saturation) (ms):
  hop                                     p50      p99
  round trip: sent -> run ended        180.00   300.00
  trigger -> step start                 90.10   170.95
"""
E2E = "  runs/s (first start -> last completion):      349\n"
SIGNALS = (
    "  paced at 300 signals/s (4500 signals, 2250 runs, legs of a tuple within 1 s): signal -> run start "
    "latency p50 120.0 ms, p99 666.0 ms (p50 published -> stored 3.0 ms, stored -> run created 100.0 ms)\n"
    "    stored -> run created, split where the router fired the tuple (p50): stored -> fired 4.0 ms (the "
    "router's batch), fired -> run created 96.0 ms (its commit, the relay, the trigger stream, the scheduler's "
    "batch)\n"
)
FOREACH = (
    "  iterations/s (foreach step start -> end):      456   (4.4 s)\n"
    "  scheduler RSS: baseline 47 MB, peak 54 MB, growth 7 MB\n"
)


def test_every_figure_is_read_from_its_bench_output() -> None:
    table = table_module()
    outputs = {"profile": PROFILE, "e2e": E2E, "signals": SIGNALS, "foreach": FOREACH}
    got = [table.figure(m, outputs[m.bench]) for m in table.MEASURES]
    assert got == ["5.78", "21.66 / 52.22", "170.95", "349", "666.0", "456", "7"]
    assert table.figure(table.MEASURES[0], "nothing") == "(not printed)"


def test_every_measured_bench_is_run() -> None:
    table = table_module()
    for quick in (True, False):
        assert {m.bench for m in table.MEASURES} <= set(table.runs(quick))
        for argv in table.runs(quick).values():
            assert (ROOT / "bench" / argv[0]).is_file()


def test_before_and_after_pairs_give_each_figure_and_the_median_ratio() -> None:
    table = table_module()
    before, after, ratio = table.compared(
        ["10.0 / 20.0", "12.0 / 30.0", "8.0 / 16.0"], ["5.0 / 20.0", "6.0 / 15.0", "8.0 / 32.0"]
    )
    assert before == "10.0 / 20.0; 12.0 / 30.0; 8.0 / 16.0"
    assert after == "5.0 / 20.0; 6.0 / 15.0; 8.0 / 32.0"
    assert ratio == "0.50 / 1.00"  # medians of 0.5, 0.5, 1.0 and of 1.0, 0.5, 2.0
    # A pair with a figure missing counts for no ratio; none left gives none.
    assert table.compared(["1,382", "(not printed)"], ["2,764", "5"])[2] == "2.00"
    assert table.compared(["(not printed)"], ["5"])[2] == "-"
    assert table.numbers("21.66 / 52.22") == [21.66, 52.22]
    assert table.numbers("(not printed)") is None


INTERLEAVE = """
critical path of 300 unloaded runs per version, interleaved one at a time (ms):
  A = /tmp/before (its libs and services first on PYTHONPATH), B = this checkout
  hop                                  A p50   B p50    B/A    A p99    B p99
  client -> API accepted                0.93    0.93   1.00     3.21     1.53
  round trip: sent -> run ended        14.00    7.00   0.50    20.00    12.00
  round trip p50, A / B, in each third of the runs: 14.10 / 7.00 (B/A 0.50); 13.90 / 7.10 (B/A 0.51)
"""


def test_the_interleaved_round_trip_gives_both_sides_from_one_run() -> None:
    table = table_module()
    assert table.interleaved(INTERLEAVE) == ("14.00 / 20.00", "7.00 / 12.00")
    assert table.interleaved(PROFILE) == ("(not printed)", "(not printed)")
    argv = table.interleave_run(Path("/tmp/before"), quick=False)
    assert argv[:3] == ["interleave.py", "--against", "/tmp/before"]
    assert (ROOT / "bench" / argv[0]).is_file()


def test_compare_adds_the_interleaved_row_run_once_per_pair_with_the_after_code(
    monkeypatch: Any, capsys: Any
) -> None:
    table = table_module()
    outputs = {"profile.py": PROFILE, "e2e.py": E2E, "signals.py": SIGNALS, "foreach.py": FOREACH}
    calls: list[tuple[str, Path | None]] = []

    def fake_run(argv: list[str], code: Path | None) -> str:
        calls.append((argv[0], code))
        return INTERLEAVE if argv[0] == "interleave.py" else outputs[argv[0]]

    monkeypatch.setattr(table, "run_bench", fake_run)
    assert table.compare(Path("/tmp/before"), Path("/tmp/after"), 2, True) == 0
    assert [c for c in calls if c[0] == "interleave.py"] == [("interleave.py", Path("/tmp/after"))] * 2
    row = next(line for line in capsys.readouterr().out.splitlines() if "interleaved (interleave.py)" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:4] == ["14.00 / 20.00; 14.00 / 20.00", "7.00 / 12.00; 7.00 / 12.00", "0.50 / 0.60"]
