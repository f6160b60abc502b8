"""``python -m legato.signal_router``: run the signal router service."""

from __future__ import annotations

import sys

from legato.runtime.entry import connection_only_main
from legato.signal_router.service import run_signal_router


def main(argv: list[str] | None = None) -> int:
    """``python -m legato.signal_router``: run the signal router until SIGTERM; the exit code."""
    return connection_only_main(
        "signal-router", "Run the Legato signal router service.", run_signal_router, argv
    )


if __name__ == "__main__":
    sys.exit(main())
