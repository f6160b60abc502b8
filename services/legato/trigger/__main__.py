"""``python -m legato.trigger``: run the trigger service (API, registry, cron)."""

from __future__ import annotations

import argparse
import sys

from legato.runtime.entry import run_service
from legato.runtime.settings import SettingsError, load_settings
from legato.trigger.service import run_trigger


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="legato trigger", description="Run the Legato trigger service.")
    parser.add_argument("--nats-url")
    parser.add_argument("--database-url")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(overrides={"nats_url": args.nats_url, "database_url": args.database_url})
    except SettingsError as exc:
        print(f"legato trigger: {exc}", file=sys.stderr)
        return 2
    return run_service("trigger", run_trigger(settings))


if __name__ == "__main__":
    sys.exit(main())
