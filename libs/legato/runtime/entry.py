"""Running a service's main coroutine: start-up failures end with one clear line, not a traceback."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from legato.config.settings import Settings, SettingsError, load_settings


def run_service(name: str, main: Coroutine[Any, Any, None]) -> int:
    """``asyncio.run`` the service; map the errors a user can fix to one line and exit code 1."""
    from legato.bus.streams import ProvisioningError
    from legato.store.migrations import MigrationError

    try:
        asyncio.run(main)
    except (ConnectionError, MigrationError, ProvisioningError, TimeoutError) as exc:
        print(f"legato {name}: {exc}", file=sys.stderr)
        return 1
    except SettingsError as exc:
        print(f"legato {name}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def connection_only_main(
    name: str,
    description: str,
    service: Callable[[Settings], Coroutine[Any, Any, None]],
    argv: list[str] | None = None,
) -> int:
    """``python -m legato.<service>`` for a service whose only flags are the server URLs."""
    parser = argparse.ArgumentParser(prog=f"legato {name}", description=description)
    parser.add_argument("--nats-url")
    parser.add_argument("--database-url")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(overrides={"nats_url": args.nats_url, "database_url": args.database_url})
    except SettingsError as exc:
        print(f"legato {name}: {exc}", file=sys.stderr)
        return 2
    return run_service(name, service(settings))
