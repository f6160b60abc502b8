"""Run every benchmark in bench/ one after the other and print their figures (``make bench``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
ORDER = [
    "sel.py",
    "bus.py",
    "e2e.py",
    "client.py",
    "profile.py",
    "foreach.py",
    "strategies.py",
    "signals.py",
    "steps.py",
    "web.py",
]


def main() -> int:
    failed = []
    for name in ORDER:
        path = HERE / name
        if not path.exists():
            continue
        print(f"\n=== {name} " + "=" * (60 - len(name)), flush=True)
        code = subprocess.call([sys.executable, str(path), *sys.argv[1:]])
        if code != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
