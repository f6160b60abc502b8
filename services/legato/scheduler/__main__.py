"""``python -m legato.scheduler``: run the scheduler service."""

from __future__ import annotations

import argparse
import sys

from legato.config.settings import SettingsError, load_settings
from legato.runtime.entry import run_service
from legato.scheduler.service import run_scheduler


def main(argv: list[str] | None = None) -> int:
    """``python -m legato.scheduler``: run a scheduler replica until SIGTERM; the exit code."""
    parser = argparse.ArgumentParser(prog="legato scheduler", description="Run the Legato scheduler service.")
    parser.add_argument("--nats-url")
    parser.add_argument("--database-url")
    parser.add_argument("--partitions", type=int)
    parser.add_argument("--replica-id")
    parser.add_argument("--lease-ttl", type=float, default=10.0)
    args = parser.parse_args(argv)
    try:
        settings = load_settings(
            overrides={
                "nats_url": args.nats_url,
                "database_url": args.database_url,
                "partitions": args.partitions,
                "replica_id": args.replica_id,
            }
        )
    except SettingsError as exc:
        print(f"legato scheduler: {exc}", file=sys.stderr)
        return 2
    return run_service(
        "scheduler", run_scheduler(settings, lease_ttl=args.lease_ttl), event_loop=settings.event_loop
    )


if __name__ == "__main__":
    sys.exit(main())
