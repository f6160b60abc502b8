"""Running a service's main coroutine: start-up failures end with one clear line, not a traceback."""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from legato.config.settings import Settings, SettingsError, load_settings
from legato.telemetry.logging import mark_service_process


def loop_factory(event_loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop factory for ``LEGATO_EVENT_LOOP``: uvloop's, or None for the standard loop.

    uvloop (libuv) spends less CPU per socket read and callback than the standard loop; a platform
    without it (it is not built for Windows) runs on the standard loop.
    """
    if event_loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


# The first generation's collection threshold for services (CPython's default: 700 allocations). A
# service allocates and frees many short-lived objects per message (decoded structs, coroutines,
# futures) that reference counting frees at once; scanning for cycles every 700 of them cost about
# 6 % of the scheduler's CPU at load (py-spy). Collections of the older generations still follow.
SERVICE_GC_THRESHOLD = 20_000


def tune_gc() -> None:
    """Fewer cycle collections for a long-running service: what start-up allocated (modules, classes,
    settings) is moved out of the collector's sight, and the youngest generation is collected every
    ``SERVICE_GC_THRESHOLD`` allocations instead of 700. Memory bound: cycles are still collected."""
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(SERVICE_GC_THRESHOLD, second, third)


def run_service(name: str, main: Coroutine[Any, Any, None], *, event_loop: str = "uvloop") -> int:
    """Run the service on its event loop; map the errors a user can fix to one line and exit code 1.

    ``event_loop`` is ``Settings.event_loop`` (``LEGATO_EVENT_LOOP``): "uvloop" or "asyncio".
    """
    from legato.bus.streams import ProvisioningError
    from legato.store.migrations import MigrationError

    tune_gc()
    mark_service_process()
    try:
        with asyncio.Runner(loop_factory=loop_factory(event_loop)) as runner:
            runner.run(main)
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
    return run_service(name, service(settings), event_loop=settings.event_loop)
