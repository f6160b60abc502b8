"""``python -m legato.signal_router``: run the signal router service."""

from __future__ import annotations

import argparse
import sys

from legato.runtime.entry import run_service
from legato.runtime.settings import SettingsError, load_settings
from legato.signal_router.service import run_signal_router


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="legato signal-router", description="Run the Legato signal router service."
    )
    parser.add_argument("--nats-url")
    parser.add_argument("--database-url")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(overrides={"nats_url": args.nats_url, "database_url": args.database_url})
    except SettingsError as exc:
        print(f"legato signal-router: {exc}", file=sys.stderr)
        return 2
    return run_service("signal-router", run_signal_router(settings))


if __name__ == "__main__":
    sys.exit(main())
