"""The executor service: runs step attempts (noop, sleep, shell, python, http) from a work queue.

Imports are lazy so the python-step worker (``python -m legato.executor.python_worker``), which lives in
this package, starts without loading NATS, Postgres and OpenTelemetry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from legato.executor.service import ExecutorOptions, ExecutorService, run_executor

__all__ = ["ExecutorOptions", "ExecutorService", "run_executor"]


def __getattr__(name: str) -> object:
    if name in __all__:
        from legato.executor import service

        return getattr(service, name)
    raise AttributeError(f"module 'legato.executor' has no attribute {name!r}")
