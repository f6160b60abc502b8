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
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

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


def run_bench(argv: list[str], code: Path | None) -> str:
    env = dict(os.environ)
    if code is not None:
        paths = [str(code / "libs"), str(code / "services")]
        env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    print(f"--- {' '.join(argv)}", flush=True)
    proc = subprocess.run(
        [sys.executable, str(HERE / argv[0]), *argv[1:]], env=env, capture_output=True, text=True
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


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--code", type=Path, help="measure this checkout's code (default: this one)")
    parser.add_argument("--quick", action="store_true", help="small sizes: check the table, not the figures")
    args = parser.parse_args()
    if args.code is not None and not (args.code / "libs" / "legato").is_dir():
        parser.error(f"--code {args.code}: no libs/legato there (a Legato checkout is wanted)")
    outputs = {name: run_bench(argv, args.code) for name, argv in runs(args.quick).items()}
    rows = [(m.label, figure(m, outputs[m.bench]), m.turn2, m.goal) for m in MEASURES]
    head = ("measure", "this run", "when filed (other machine)", "goal")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    print(f"\nperformance table of {args.code or 'this checkout'} ({os.cpu_count()} CPUs here)")
    for r in [head, tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    missing = [r[0] for r in rows if r[1] == "(not printed)"]
    if missing:
        print(f"missing figures: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
