"""``python -m legato.trigger``: run the trigger service (API, registry, cron)."""

from __future__ import annotations

import sys

from legato.runtime.entry import connection_only_main
from legato.trigger.service import run_trigger


def main(argv: list[str] | None = None) -> int:
    """``python -m legato.trigger``: run the trigger (API, cron, backfills) until SIGTERM; the exit code."""
    return connection_only_main("trigger", "Run the Legato trigger service.", run_trigger, argv)


if __name__ == "__main__":
    sys.exit(main())
