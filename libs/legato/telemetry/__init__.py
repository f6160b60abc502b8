"""Logs, traces and metrics for every Legato service: structlog JSON logs, OpenTelemetry spans and
instruments, W3C traceparent on NATS."""

from legato.telemetry.ids import (
    forced_ids,
    new_span_context_ids,
    parse_traceparent,
    remote_parent,
    traceparent_for,
)
from legato.telemetry.logging import bind_context, configure_logging, get_logger
from legato.telemetry.metrics import configure_metrics, metrics, shutdown_metrics
from legato.telemetry.tracing import (
    configure_tracing,
    consume_span,
    emit_span,
    extract_context,
    get_tracer,
    inject_headers,
    shutdown_tracing,
    start_span_with_ids,
    traceparent_of,
)

__all__ = [
    "bind_context",
    "configure_logging",
    "configure_metrics",
    "configure_tracing",
    "consume_span",
    "emit_span",
    "extract_context",
    "forced_ids",
    "get_logger",
    "get_tracer",
    "inject_headers",
    "metrics",
    "new_span_context_ids",
    "parse_traceparent",
    "remote_parent",
    "shutdown_metrics",
    "shutdown_tracing",
    "start_span_with_ids",
    "traceparent_for",
    "traceparent_of",
]
