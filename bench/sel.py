"""SEL and definition benchmarks: prints figures (this is not a test).

    .venv/bin/python bench/sel.py            # about 15 s
    .venv/bin/python bench/sel.py --quick    # about 3 s

Figures:
  * evaluations/s of a compiled typical expression (date arithmetic + comparison) — goal >= 100,000
  * evaluations/s (and items/s) of a 1,000-item comprehension
  * time to parse + validate a 1,000-step definition, and to compile it from stored JSON
  * how long after its budget runs out a runaway expression is stopped — goal <= 50 ms — and the
    wall time of a few hostile expressions under the default limits
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from legato.core import compile_workflow, definition_from_json, definition_to_json, parse_definition
from legato.sel import Limits, SelError, compile_expression, runtime

ENV: dict[str, Any] = {
    "params": {"ds": "2026-11-01", "n": 21, "table": "db.orders"},
    "instance": {"start_time": datetime(2026, 11, 5, 6, 0, tzinfo=UTC)},
}


def rate(fn: Callable[[], Any], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds`` (best of three slices)."""
    results = []
    for _ in range(3):
        count = 0
        started = time.perf_counter()
        deadline = started + seconds / 3
        while True:
            for _ in range(50):
                fn()
            count += 50
            now = time.perf_counter()
            if now >= deadline:
                break
        results.append(count / (now - started))
    return max(results)


def bench_evaluations(seconds: float) -> None:
    print("Evaluation throughput (one core)")
    cases = [
        (
            "typical: date(params.ds) + days(1) < date(instance.start_time)",
            "date(params.ds) + days(1) < date(instance.start_time)",
        ),
        ("condition: params.n > 3 and params.table != ''", "params.n > 3 and params.table != ''"),
        ("template part: format('{}-{}', params.table, params.n)", "format('{}-{}', params.table, params.n)"),
    ]
    for label, source in cases:
        expression = compile_expression(source)
        expression.evaluate(ENV)
        per_second = rate(lambda e=expression: e.evaluate(ENV), seconds)  # type: ignore[misc]
        print(f"  {label:<66} {per_second:>12,.0f} evals/s")
    for label, source in [
        ("1,000-item list comprehension", "[x * 2 for x in range(1000) if x % 3 != 0]"),
        ("1,000-item sum over a comprehension", "sum([x * 2 for x in range(1000)])"),
    ]:
        expression = compile_expression(source)
        per_second = rate(lambda e=expression: e.evaluate(ENV), seconds)  # type: ignore[misc]
        print(f"  {label:<66} {per_second:>12,.0f} evals/s  ({per_second * 1000:,.0f} items/s)")
    started = time.perf_counter()
    count = 0
    while time.perf_counter() - started < seconds / 3:
        compile_expression("date(params.ds) + days(1) < date(instance.start_time)")
        count += 1
    print(
        f"  {'compile (parse + check + build closures) of the typical expression':<66} {count / (seconds / 3):>12,.0f} /s"
    )


def thousand_steps() -> str:
    steps = []
    for i in range(1000):
        step: dict[str, Any] = {
            "id": f"s{i}",
            "type": "shell",
            "command": f"echo ${{params.table}} ${{params.day}} step {i}"
            + (f" ${{steps.s{i - 1}.outputs.n}}" if i else ""),
            "params": {"limit": "${params.n * 2}", "tag": f"t{i % 7}"},
            "outputs": ["n"],
            "retry": {"error": 1},
            "timeout": "10m",
        }
        if i:
            step["depends_on"] = [f"s{i - 1}"]
            if i % 10 == 0:
                step["depends_on"].append(f"s{i - 10}")
        if i % 50 == 0 and i:
            step["next"] = (
                [{"step": f"s{i + 1}", "when": f"int(steps.s{i}.outputs.n) > 0"}] if i + 1 < 1000 else []
            )
        steps.append(step)
    definition = {
        "id": "thousand",
        "run_strategy": {"type": "parallel", "max_concurrency": 4},
        "params": {"table": "db.orders", "n": 5, "day": {"type": "date", "default": "2026-11-01"}},
        "triggers": [{"type": "cron", "cron": "0 2 * * *", "timezone": "Europe/Paris"}],
        "steps": steps,
    }
    return json.dumps(definition)


def bench_validation(repeats: int) -> None:
    print("Definitions")
    text = thousand_steps()
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        definition = parse_definition(text)
        timings.append(time.perf_counter() - started)
    print(
        f"  parse + validate a 1,000-step definition ({len(text) // 1024} KiB JSON): "
        f"median {statistics.median(timings) * 1000:.0f} ms, best {min(timings) * 1000:.0f} ms"
    )
    stored = definition_to_json(definition)
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        compile_workflow(definition_from_json(stored))
        timings.append(time.perf_counter() - started)
    print(
        f"  decode stored JSON + compile_workflow (what the scheduler caches): "
        f"median {statistics.median(timings) * 1000:.0f} ms"
    )


RUNAWAYS = [
    "[x for x in range(10**12)]",
    "sum([1 for a in range(1000) for b in range(1000) for c in range(1000)])",
    "[[x for x in range(1000)] for y in range(1000)]",
    "str([[[0] * 1000] * 1000] * 1000)",
    "[[0] * 1000] * 1000 == [[0] * 1000] * 1000",
    "sorted(list(range(10**5)))",
    "[format('{}', x) for x in range(10**9)]",
]
HOSTILE = [
    "'%s' * 10**9",
    "10**10**10",
    "[[[]] * 1000] * 1000",
    "str(10**4000)",
    "upper('ß' * 600000)",
    "parse_json('[' * 100000 + ']' * 100000)",
    "join(['x' * 100000] * 100, '')",
]


def bench_runaways(rounds: int) -> None:
    print("Runaway and hostile expressions")
    exhausted_at: list[float] = []
    original = runtime.Ctx.exhausted

    def stamped(self: runtime.Ctx) -> Any:
        exhausted_at.append(time.perf_counter())
        return original(self)

    runtime.Ctx.exhausted = stamped  # type: ignore[method-assign]
    try:
        worst = 0.0
        for budget in (10_000, 100_000, 1_000_000):
            limits = Limits(max_steps=budget)
            lags = []
            walls = []
            for source in RUNAWAYS:
                expression = compile_expression(source)
                for _ in range(rounds):
                    exhausted_at.clear()
                    started = time.perf_counter()
                    try:
                        expression.evaluate(ENV, limits)
                    except SelError:
                        stopped = time.perf_counter()
                    else:
                        raise AssertionError(f"{source} did not stop")
                    walls.append(stopped - started)
                    if exhausted_at:
                        lags.append(stopped - exhausted_at[0])
            worst = max(worst, max(lags))
            print(
                f"  budget {budget:>9,} steps: stopped {max(lags) * 1e6:7.1f} us (max) after the budget ran out; "
                f"wall time to stop {statistics.median(walls) * 1000:6.1f} ms median, {max(walls) * 1000:6.1f} ms max "
                f"over {len(walls)} runs"
            )
        print(f"  worst stop lag after the budget ran out: {worst * 1000:.3f} ms (goal <= 50 ms)")
    finally:
        runtime.Ctx.exhausted = original  # type: ignore[method-assign]
    for source in RUNAWAYS + HOSTILE:
        expression = compile_expression(source)
        started = time.perf_counter()
        try:
            expression.evaluate(ENV)
            outcome = "value"
        except SelError as exc:
            outcome = f"{type(exc).__name__}({getattr(exc, 'limit', '')})".replace("()", "")
        wall = time.perf_counter() - started
        print(f"  {source[:58]:<58} {wall * 1000:7.1f} ms  {outcome}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs, rougher figures")
    args = parser.parse_args(argv)
    seconds = 0.6 if args.quick else 3.0
    print(f"Python {sys.version.split()[0]}; {'quick' if args.quick else 'full'} run\n")
    bench_evaluations(seconds)
    print()
    bench_validation(2 if args.quick else 5)
    print()
    bench_runaways(1 if args.quick else 3)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
