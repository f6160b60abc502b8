"""Run the benchmarks in bench/ one after the other and print their figures (``make bench``), ending
with the performance table (``table.py``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from legato.devstack.processes import die_with_parent

HERE = Path(__file__).parent
# table.py runs profile.py, e2e.py, signals.py and foreach.py and ends with the performance table.
ORDER = [
    "sel.py",
    "bus.py",
    "client.py",
    "strategies.py",
    "steps.py",
    "web.py",
    "fairness.py",
    "idle.py",
    "table.py",
]


def main() -> int:
    failed = []
    for name in ORDER:
        path = HERE / name
        if not path.exists():
            continue
        print(f"\n=== {name} " + "=" * (60 - len(name)), flush=True)
        # A bench stops, and stops what it started, when this runner is stopped.
        code = subprocess.call([sys.executable, str(path), *sys.argv[1:]], preexec_fn=die_with_parent())
        if code != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
