"""OpenTelemetry tracing: provider set-up and W3C trace context on NATS message headers.

Nothing is exported unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the traces-specific variable) is set,
in which case spans go through a batch processor to OTLP over gRPC or HTTP
(``OTEL_EXPORTER_OTLP_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``: ``grpc`` or ``http/protobuf``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

_PROPAGATOR = TraceContextTextMapPropagator()
_provider: TracerProvider | None = None


def _otlp_exporter_processor() -> SpanProcessor | None:
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not endpoint or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).lower()
    if protocol.startswith("http"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return BatchSpanProcessor(HttpExporter())
    if protocol != "grpc":
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL: expected grpc or http/protobuf, got {protocol!r}")
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

    return BatchSpanProcessor(GrpcExporter())


def configure_tracing(service: str, *, extra_processor: SpanProcessor | None = None) -> TracerProvider:
    """Install the process-wide tracer provider with ``service.name=legato-<service>``."""
    global _provider
    if _provider is not None:
        if extra_processor is not None:
            _provider.add_span_processor(extra_processor)
        return _provider
    attrs: dict[str, AttributeValue] = {"service.name": f"legato-{service}", "service.namespace": "legato"}
    provider = TracerProvider(resource=Resource.create(attrs))
    exporter = _otlp_exporter_processor()
    if exporter is not None:
        provider.add_span_processor(exporter)
    if extra_processor is not None:
        provider.add_span_processor(extra_processor)
    trace.set_tracer_provider(provider)
    _tracers.clear()
    _provider = provider
    return provider


def shutdown_tracing() -> None:
    """Flush and stop span export (called last in a service's shutdown)."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
        _provider = None


_tracers: dict[str, trace.Tracer] = {}


def get_tracer(name: str = "legato") -> trace.Tracer:
    """A cached tracer (``trace.get_tracer`` builds a new one per call: costly on hot paths)."""
    tracer = _tracers.get(name)
    if tracer is None:
        tracer = _tracers[name] = trace.get_tracer(name)
    return tracer


def inject_headers(headers: dict[str, str] | None = None, ctx: Context | None = None) -> dict[str, str]:
    """Write the current (or given) trace context into NATS headers as W3C ``traceparent``."""
    out = headers if headers is not None else {}
    _PROPAGATOR.inject(out, context=ctx)
    return out


def extract_context(headers: Mapping[str, str] | None) -> Context:
    """Read a W3C trace context from NATS headers (an empty context when absent or malformed)."""
    return _PROPAGATOR.extract(dict(headers or {}))


def traceparent_of(ctx: Context | None = None) -> str | None:
    """The ``traceparent`` string for a context, to store beside durable state (outbox, instance rows)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=ctx)
    return carrier.get("traceparent")


@contextmanager
def consume_span(
    name: str,
    headers: Mapping[str, str] | None,
    *,
    attributes: Mapping[str, AttributeValue] | None = None,
    links: list[Link] | None = None,
    kind: SpanKind = SpanKind.CONSUMER,
) -> Iterator[Span]:
    """Open a span as the child of the trace carried by ``headers`` and make it current.

    The context token is detached in ``finally`` so a failing handler never leaks trace context.
    """
    parent = extract_context(headers)
    token = otel_context.attach(parent)
    try:
        with get_tracer().start_as_current_span(
            name, kind=kind, attributes=dict(attributes or {}), links=links, record_exception=True
        ) as span:
            try:
                yield span
            except BaseException as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
    finally:
        otel_context.detach(token)
