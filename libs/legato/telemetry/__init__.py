"""Logs and traces for every Legato service: structlog JSON logs, OpenTelemetry spans, W3C traceparent on NATS."""

from legato.telemetry.logging import bind_context, configure_logging, get_logger
from legato.telemetry.tracing import (
    configure_tracing,
    consume_span,
    extract_context,
    get_tracer,
    inject_headers,
    shutdown_tracing,
)

__all__ = [
    "bind_context",
    "configure_logging",
    "configure_tracing",
    "consume_span",
    "extract_context",
    "get_logger",
    "get_tracer",
    "inject_headers",
    "shutdown_tracing",
]
