"""``bench/signals.py``'s order of signals: the paced pass keeps a tuple's two legs within a window, so its
runs start at half the signal rate from the first window on; ``--spread 0`` shuffles the whole pass."""

from __future__ import annotations

from typing import Any

from tests.support.bench import load_bench_module


def signals_of(keys: int) -> list[tuple[str, str, dict[str, str]]]:
    return [(leg, f"{leg}-{k}", {"key": f"k{k}"}) for k in range(keys) for leg in ("left", "right")]


def completions(order: list[Any], window: int) -> list[int]:
    """How many tuples complete (their second leg goes out) within each ``window`` signals of ``order``."""
    seen: set[str] = set()
    counts = [0] * ((len(order) + window - 1) // window)
    for i, (_, _, body) in enumerate(order):
        if body["key"] in seen:
            counts[i // window] += 1
        seen.add(body["key"])
    return counts


def test_a_window_keeps_each_tuples_legs_in_it_and_shuffles_within() -> None:
    bench = load_bench_module("signals.py")
    order = signals_of(5000)
    bench.shuffle(order, 700)  # 0.5 s at 1,400 signals/s
    assert sorted(order) == sorted(signals_of(5000))  # a permutation: nothing lost or doubled
    assert order != signals_of(5000)
    # Every tuple completes in the window it started in: half the signals of each window are completions.
    assert completions(order, 700)[:-1] == [350] * (len(order) // 700)
    assert sum(completions(order, 700)) == 5000


def test_the_whole_pass_shuffled_completes_ever_more_tuples_as_it_goes() -> None:
    bench = load_bench_module("signals.py")
    order = signals_of(5000)
    bench.shuffle(order, 0)
    assert sorted(order) == sorted(signals_of(5000))
    tenths = completions(order, 1000)
    # A tuple completes when its second leg goes out: few at first, about the signal rate at the end.
    assert tenths[0] < 120 and tenths[-1] > 850
    assert tenths[0] < tenths[4] < tenths[-1]


def test_an_odd_window_is_rounded_down_to_whole_tuples() -> None:
    bench = load_bench_module("signals.py")
    order = signals_of(50)
    bench.shuffle(order, 7)
    assert completions(order, 6)[:-1] == [3] * (100 // 6)
