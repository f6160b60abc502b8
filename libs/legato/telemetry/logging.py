"""structlog configuration shared by every service.

JSON lines by default (one object per event, machine-readable), a readable console renderer when
attached to a terminal. Context (workflow_id, instance_id, step_id, attempt, msg_id) is bound once per
handler through contextvars and the active trace/span ids are added to every event.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any, TextIO

import structlog
from opentelemetry import trace

_configured = False


def _add_trace_ids(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    span = trace.get_current_span()
    ctx = span.get_span_context()
    if ctx.is_valid:
        event.setdefault("trace_id", format(ctx.trace_id, "032x"))
        event.setdefault("span_id", format(ctx.span_id, "016x"))
    return event


# A service's own process configures logging once (``run_service``): module loggers then keep the
# logger they build on first use instead of building one per call (a tenth of the executor's work per
# attempt went to structlog's lazy proxies). Off elsewhere: tests configure logging many times in one
# process, and a kept logger would keep writing to the stream of the first configuration.
_service_process = False


def mark_service_process() -> None:
    """This process runs one service, which configures logging once: let loggers be kept on first use."""
    global _service_process
    _service_process = True


def configure_logging(
    service: str,
    *,
    level: str | None = None,
    fmt: str | None = None,
    stream: TextIO | None = None,
) -> None:
    """Configure structlog and stdlib logging for one service process.

    ``level`` defaults to ``LEGATO_LOG_LEVEL`` (info); ``fmt`` to ``LEGATO_LOG_FORMAT``: ``json``,
    ``console``, or ``auto`` (console on a terminal, JSON otherwise).
    """
    global _configured
    out = stream or sys.stderr
    level_name = (level or os.environ.get("LEGATO_LOG_LEVEL") or "info").upper()
    numeric = logging.getLevelName(level_name)
    if not isinstance(numeric, int):
        raise ValueError(f"LEGATO_LOG_LEVEL: unknown level {level_name!r}")
    chosen = (fmt or os.environ.get("LEGATO_LOG_FORMAT") or "auto").lower()
    if chosen == "auto":
        chosen = "console" if out.isatty() else "json"
    if chosen not in ("json", "console"):
        raise ValueError(f"LEGATO_LOG_FORMAT: expected json, console or auto, got {chosen!r}")

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_trace_ids,
    ]
    renderer: Any
    if chosen == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())

    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=_service_process,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)

    # Route stdlib logging (asyncio, nats, asyncpg) through the same renderer.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=renderer,
            foreign_pre_chain=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.stdlib.ExtraAdder(),
                lambda _l, _n, ev: {**ev, "service": service},
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.INFO) if numeric < logging.INFO else numeric)
    _configured = True


def get_logger(name: str | None = None) -> Any:
    """A structlog logger; events are short snake_case verbs, facts go in fields."""
    return structlog.get_logger(name) if name else structlog.get_logger()


@contextmanager
def bind_context(**fields: Any) -> Iterator[None]:
    """Bind log fields for the duration of a handler; restores the previous values afterwards."""
    clean = {k: v for k, v in fields.items() if v is not None}
    tokens = structlog.contextvars.bind_contextvars(**clean)
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
