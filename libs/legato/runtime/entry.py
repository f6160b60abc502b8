"""Running a service's main coroutine: start-up failures end with one clear line, not a traceback."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any


def run_service(name: str, main: Coroutine[Any, Any, None]) -> int:
    """``asyncio.run`` the service; map the errors a user can fix to one line and exit code 1."""
    from legato.bus.streams import ProvisioningError
    from legato.store.migrations import MigrationError

    try:
        asyncio.run(main)
    except (ConnectionError, MigrationError, ProvisioningError, TimeoutError) as exc:
        print(f"legato {name}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
