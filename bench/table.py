"""The performance table (issue 16's measures), each figure next to its goal: ``make bench`` ends with it.

Runs the benches that measure them, each a whole stack of real processes (nats-server, a durable
PostgreSQL, the four services), one after the other, and reads their printed figures:

| measure | bench |
|---|---|
| CPU per one-step run, all processes (``/proc``), at saturation | ``profile.py`` (auth off) |
| unloaded round trip start -> ended, p50 / p99 | ``profile.py`` (200 runs one at a time) |
| trigger -> step start at half of saturation, p99 | ``profile.py`` (starts paced at half its saturated rate) |
| saturated one-step runs/s, tracing on without exporter | ``e2e.py`` (auth on, as deployed) |
| joined signal -> run started at half of the router's saturation, p99 | ``signals.py`` |
| 100,000-iteration foreach: iterations/s, scheduler RSS growth | ``foreach.py`` |

Goals are ratios against a baseline measured the same way on the same machine (machines differ by
2x): ``--code DIR`` measures the code of another checkout (its ``libs`` and ``services`` first on
``PYTHONPATH``) with these same benches, so before and after can be run back to back::

    git worktree add /tmp/before <commit>
    python bench/table.py --code /tmp/before > before.txt
    python bench/table.py > after.txt

or in one command, alternated bench by bench (before, after, before, after…) for ``--pairs`` pairs,
with every pair's figures and the median ratio after/before of each (on a noisy machine a single
run's p99 can swing 3x; the pairs show it)::

    python bench/table.py --against /tmp/before --pairs 3

With ``--against``, each pair also measures the unloaded round trip with ``interleave.py`` (both
versions' stacks up at once, their runs alternated one at a time), a row of its own: back-to-back
runs meet the machine at different times, and its drift moves one run's p50 by 10-20 %.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from legato.devstack.processes import die_with_parent

HERE = Path(__file__).parent


@dataclass(frozen=True)
class Measure:
    label: str
    bench: str  # which run gives it
    pattern: str  # a regex on that bench's output; its groups are the figure
    turn2: str  # the figure when the issue was filed (another, faster machine)
    goal: str


MEASURES = [
    Measure(
        "CPU per one-step run, all processes (ms)",
        "profile",
        r"CPU per run at saturation: .* all processes ([\d.]+) ms",
        "not measured",
        "<= half of the baseline's",
    ),
    Measure(
        "unloaded round trip start -> ended, p50 / p99 (ms)",
        "profile",
        r"unloaded one-noop-step runs(?:.|\n)*?round trip: sent -> run ended\s+([\d.]+)\s+([\d.]+)",
        "12.4 / 17",
        "<= half of the baseline's",
    ),
    Measure(
        "trigger -> step start at half of saturation, p99 (ms)",
        "profile",
        r"\(half of saturation\)(?:.|\n)*?trigger -> step start\s+[\d.]+\s+([\d.]+)",
        "140",
        "<= 30",
    ),
    Measure(
        "saturated one-step runs/s, tracing on, no exporter",
        "e2e",
        r"runs/s \(first start -> last completion\):\s+([\d.]+)",
        "1,382-1,412",
        ">= 2x the baseline's",
    ),
    Measure(
        "joined signal -> run started at half of the router's saturation, p99 (ms)",
        "signals",
        r"paced at .*start latency p50 [\d.]+ ms, p99 ([\d.]+) ms",
        "3,600",
        "<= 100",
    ),
    Measure(
        "100,000-iteration foreach, iterations/s",
        "foreach",
        r"iterations/s \(foreach step start -> end\):\s+([\d.]+)",
        "2,311",
        ">= 2x the baseline's",
    ),
    Measure(
        "100,000-iteration foreach, scheduler RSS growth (MB)",
        "foreach",
        r"growth (\d+) MB",
        "not measured",
        "<= 100",
    ),
]


# The unloaded round trip measured by ``interleave.py`` (``--against`` only): one run gives both sides,
# A (before) in groups 1 and 3, B (after) in groups 2 and 4.
INTERLEAVED = Measure(
    "unloaded round trip, interleaved (interleave.py), p50 / p99 (ms)",
    "interleave",
    r"round trip: sent -> run ended\s+([\d.]+)\s+([\d.]+)\s+[\d.]+\s+([\d.]+)\s+([\d.]+)",
    "12.4 / 17",
    "<= half of the baseline's",
)


def interleaved(output: str) -> tuple[str, str]:
    """The before and after figures (p50 / p99) of one ``interleave.py`` run."""
    found = re.search(INTERLEAVED.pattern, output)
    if found is None:
        return "(not printed)", "(not printed)"
    a50, b50, a99, b99 = found.groups()
    return f"{a50} / {a99}", f"{b50} / {b99}"


def interleave_run(before_code: Path, quick: bool) -> list[str]:
    """``interleave.py``'s command line against ``before_code`` (``quick``: a handful of runs)."""
    sizes = ["--runs", "10", "--warm", "2"] if quick else ["--runs", "300"]
    return ["interleave.py", "--against", str(before_code), *sizes]


def runs(quick: bool) -> dict[str, list[str]]:
    """The bench command lines, by name (``quick``: smaller sizes, for a check that the table works)."""
    if quick:
        return {
            "profile": ["profile.py", "--sequential", "30", "--saturated", "500", "--paced-seconds", "3"],
            "e2e": ["e2e.py", "-n", "1000", "--no-paced"],
            "signals": ["signals.py", "-n", "1000"],
            "foreach": ["foreach.py", "-n", "2000"],
        }
    return {
        "profile": ["profile.py", "--sequential", "200", "--saturated", "3000", "--paced-seconds", "10"],
        "e2e": ["e2e.py", "-n", "10000", "--no-paced"],
        "signals": ["signals.py"],
        "foreach": ["foreach.py", "-n", "100000"],
    }


def code_path(checkout: Path) -> str:
    """``PYTHONPATH`` for the code of ``checkout`` (its libs and services first)."""
    paths = [str(checkout / "libs"), str(checkout / "services"), os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(paths).rstrip(os.pathsep)


def run_bench(argv: list[str], code: Path | None) -> str:
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = code_path(code)
    print(f"--- {' '.join(argv)}", flush=True)
    proc = subprocess.run(
        [sys.executable, str(HERE / argv[0]), *argv[1:]],
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=die_with_parent(),  # a bench stops, and stops what it started, when the table is stopped
    )
    out = proc.stdout
    for line in out.splitlines():
        if "migration_applied" not in line:  # the servers' start-up, not a figure
            print(f"    {line}")
    if proc.returncode != 0:
        print(f"    (exit {proc.returncode}) {proc.stderr.strip()[-2000:]}")
    return out


def figure(measure: Measure, output: str) -> str:
    found = re.search(measure.pattern, output)
    if found is None:
        return "(not printed)"
    return " / ".join(found.groups())


def numbers(text: str) -> list[float] | None:
    """The numbers of a figure (``"21.66 / 52.22"`` -> [21.66, 52.22]); None if it was not printed."""
    try:
        return [float(part.replace(",", "")) for part in text.split(" / ")]
    except ValueError:
        return None


def compared(before: list[str], after: list[str]) -> tuple[str, str, str]:
    """A measure's figures over the pairs, before and after, and the median ratio after/before of each
    of its numbers (``"-"`` where a figure is missing)."""
    ratios: list[list[float]] = []
    for b, a in zip(before, after, strict=True):
        nb, na = numbers(b), numbers(a)
        if nb is None or na is None or len(nb) != len(na) or 0.0 in nb:
            continue
        ratios.append([y / x for x, y in zip(nb, na, strict=True)])
    ratio = (
        " / ".join(f"{statistics.median([r[i] for r in ratios]):.2f}" for i in range(len(ratios[0])))
        if ratios
        else "-"
    )
    return "; ".join(before), "; ".join(after), ratio


def print_table(title: str, head: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    print(f"\n{title}")
    for r in [head, tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


def compare(before_code: Path, after_code: Path | None, pairs: int, quick: bool) -> int:
    """Every bench run before then after, ``pairs`` times, and the table of both with their ratios."""
    figures: dict[str, list[list[str]]] = {"before": [], "after": []}
    for i in range(pairs):
        outputs: dict[str, dict[str, str]] = {"before": {}, "after": {}}
        for name, argv in runs(quick).items():
            for side, code in (("before", before_code), ("after", after_code)):
                print(f"--- pair {i + 1} of {pairs}, {side} ({code or 'this checkout'})", flush=True)
                outputs[side][name] = run_bench(argv, code)
        print(f"--- pair {i + 1} of {pairs}, both interleaved", flush=True)
        # Run with the after side's code: its services are this run's B, the before side's its A.
        both = interleaved(run_bench(interleave_run(before_code, quick), after_code))
        for k, side in enumerate(figures):
            figures[side].append([*(figure(m, outputs[side][m.bench]) for m in MEASURES), both[k]])
    measures = [*MEASURES, INTERLEAVED]
    rows = [
        (
            m.label,
            *compared([p[j] for p in figures["before"]], [p[j] for p in figures["after"]]),
            m.goal,
        )
        for j, m in enumerate(measures)
    ]
    print_table(
        f"performance table, {pairs} pair(s) alternated, before = {before_code}, after = "
        f"{after_code or 'this checkout'} ({os.cpu_count()} CPUs here)",
        ("measure", "before (each pair)", "after (each pair)", "after/before (median)", "goal"),
        rows,
    )
    missing = [
        m.label
        for j, m in enumerate(measures)
        for p in [*figures["before"], *figures["after"]]
        if p[j] == "(not printed)"
    ]
    if missing:
        print(f"missing figures: {', '.join(sorted(set(missing)))}", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--code", type=Path, help="measure this checkout's code (default: this one)")
    parser.add_argument("--quick", action="store_true", help="small sizes: check the table, not the figures")
    parser.add_argument(
        "--against",
        type=Path,
        help="compare with this checkout's code (before), each bench alternated with this one (after)",
    )
    parser.add_argument("--pairs", type=int, default=1, help="with --against: how many before/after pairs")
    args = parser.parse_args()
    for flag, path in (("--code", args.code), ("--against", args.against)):
        if path is not None and not (path / "libs" / "legato").is_dir():
            parser.error(f"{flag} {path}: no libs/legato there (a Legato checkout is wanted)")
    if args.pairs < 1:
        parser.error(f"--pairs: at least 1, got {args.pairs}")
    if args.against is not None:
        return compare(args.against, args.code, args.pairs, args.quick)
    outputs = {name: run_bench(argv, args.code) for name, argv in runs(args.quick).items()}
    rows = [(m.label, figure(m, outputs[m.bench]), m.turn2, m.goal) for m in MEASURES]
    print_table(
        f"performance table of {args.code or 'this checkout'} ({os.cpu_count()} CPUs here)",
        ("measure", "this run", "when filed (other machine)", "goal"),
        rows,
    )
    missing = [r[0] for r in rows if r[1] == "(not printed)"]
    if missing:
        print(f"missing figures: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
