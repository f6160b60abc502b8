"""OpenTelemetry tracing: provider set-up and W3C trace context on NATS message headers.

Set-up follows the standard ``OTEL_*`` variables: spans go through a batch processor
(``OTEL_BSP_*``) to OTLP over gRPC or HTTP when ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (``OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL``: ``grpc`` (default) or
``http/protobuf``; headers, timeout, compression and TLS from the same family of variables);
``OTEL_TRACES_EXPORTER=none`` or ``OTEL_SDK_DISABLED=true`` turn export off, ``console`` prints spans;
``OTEL_TRACES_SAMPLER[_ARG]`` choose the sampler; ``OTEL_RESOURCE_ATTRIBUTES`` adds resource attributes
(``service.name`` is always ``legato-<service>``). A ``span_file`` (tests: ``Settings.test_span_file``)
additionally gets every span as a JSON line (see ``span_file``).

The provider's id generator honours ``forced_ids`` (see ``ids``), so a span can be emitted late with
ids reserved early: ``emit_span``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_OFF,
    DEFAULT_ON,
    Decision,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from legato.telemetry.ids import (
    ForcedIdGenerator,
    forced_ids,
    new_span_id,
    new_trace_id,
    remote_parent_of,
)
from legato.telemetry.resource import service_resource
from legato.telemetry.span_file import SpanFileExporter

_PROPAGATOR = TraceContextTextMapPropagator()
_provider: TracerProvider | None = None


def _env(*names: str) -> str:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return ""


def sdk_disabled() -> bool:
    """Whether ``OTEL_SDK_DISABLED=true`` turns tracing and metrics off."""
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def otlp_protocol(signal: str) -> str:
    """``grpc`` or ``http/protobuf`` for ``signal`` (``TRACES``/``METRICS``), from the OTLP variables."""
    protocol = _env(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    protocol = protocol.lower()
    if protocol not in ("grpc", "http/protobuf", "http/json", "http"):
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL: expected grpc or http/protobuf, got {protocol!r}")
    if protocol == "http/json":
        raise ValueError("OTEL_EXPORTER_OTLP_PROTOCOL: http/json is not supported, use http/protobuf or grpc")
    return protocol


def otlp_endpoint_set(signal: str) -> bool:
    """Whether an OTLP endpoint is configured for ``signal`` (``TRACES``/``METRICS``)."""
    return bool(_env(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"))


def _span_exporters() -> list[SpanExporter]:
    """The exporters the environment asks for (the exporters read their own endpoint/headers/TLS)."""
    if sdk_disabled():
        return []
    wanted = [x.strip().lower() for x in (_env("OTEL_TRACES_EXPORTER") or "otlp").split(",") if x.strip()]
    out: list[SpanExporter] = []
    if "otlp" in wanted and otlp_endpoint_set("TRACES"):
        if otlp_protocol("TRACES").startswith("http"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

            out.append(HttpExporter())
        else:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

            out.append(GrpcExporter())
    if "console" in wanted:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        out.append(ConsoleSpanExporter())
    return out


_FIXED_SAMPLERS: dict[str, Sampler] = {
    "always_on": ALWAYS_ON,
    "always_off": ALWAYS_OFF,
    "parentbased_always_on": DEFAULT_ON,
    "parentbased_always_off": DEFAULT_OFF,
}
_RATIO_SAMPLERS: dict[str, type[TraceIdRatioBased] | type[ParentBasedTraceIdRatio]] = {
    "traceidratio": TraceIdRatioBased,
    "parentbased_traceidratio": ParentBasedTraceIdRatio,
}


def sampler_named(name: str, arg: str = "") -> Sampler:
    """The sampler ``OTEL_TRACES_SAMPLER``/``OTEL_TRACES_SAMPLER_ARG`` name, as the SDK reads them: an
    unknown name is ``parentbased_always_on``, a ratio that is not a rate is 1.0 (each with a warning)."""
    key = name.strip().lower()
    if key in _RATIO_SAMPLERS:
        try:
            return _RATIO_SAMPLERS[key](float(arg))
        except ValueError:  # not a number, or not in [0, 1]
            logging.getLogger(__name__).warning("OTEL_TRACES_SAMPLER_ARG %r is not a rate: 1.0", arg)
            return _RATIO_SAMPLERS[key](1.0)
    if key not in _FIXED_SAMPLERS:
        logging.getLogger(__name__).warning("unknown OTEL_TRACES_SAMPLER %r: parentbased_always_on", name)
    return _FIXED_SAMPLERS.get(key, DEFAULT_ON)


class _RecordWhenSomeoneListens(Sampler):
    """Records spans only once the provider has a span processor; otherwise they are non-recording.

    With no exporter and no span file nobody reads a span, so building one (attributes, events, end
    time) is pure cost: non-recording spans keep ids and trace context flowing (the run's reserved ids,
    ``traceparent`` in NATS headers) at a third of the price. Once a processor is added the
    ``OTEL_TRACES_SAMPLER`` sampler decides; without that variable a span under a remote parent that was
    not sampled is still recorded, so one service exporting while another does not still gets spans.
    """

    def __init__(self) -> None:
        self.listening = False
        chosen = os.environ.get("OTEL_TRACES_SAMPLER", "").strip()
        self._inner: Sampler = (
            sampler_named(chosen, os.environ.get("OTEL_TRACES_SAMPLER_ARG", ""))
            if chosen
            else ParentBased(
                ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON, local_parent_not_sampled=ALWAYS_ON
            )
        )

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if not self.listening:
            return SamplingResult(Decision.DROP)
        return self._inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"RecordWhenSomeoneListens({self._inner.get_description()})"


class LegatoTracerProvider(TracerProvider):
    """A tracer provider whose spans record only when some processor will see them."""

    def __init__(self, **kwargs: object) -> None:
        self._gate = _RecordWhenSomeoneListens()
        super().__init__(sampler=self._gate, **kwargs)  # type: ignore[arg-type]

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        super().add_span_processor(span_processor)
        self._gate.listening = True

    @property
    def listening(self) -> bool:
        return self._gate.listening


def recording() -> bool:
    """Whether a span started now is recorded by anyone. False only for Legato's own provider with no
    exporter and no span file: then every span is non-recording and hot paths may skip building one."""
    source = _provider if _provider is not None else trace.get_tracer_provider()
    return not isinstance(source, LegatoTracerProvider) or source.listening


def build_tracer_provider(
    service: str,
    *,
    instance_id: str | None = None,
    span_file: str = "",
    extra_processor: SpanProcessor | None = None,
) -> TracerProvider:
    """A tracer provider set up from the environment (not installed globally: see ``configure_tracing``)."""
    provider = LegatoTracerProvider(
        resource=service_resource(service, instance_id=instance_id), id_generator=ForcedIdGenerator()
    )
    for exporter in _span_exporters():
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if span_file:
        # Written as each span ends, so spans survive a kill -9 of the process right after.
        provider.add_span_processor(SimpleSpanProcessor(SpanFileExporter(span_file)))
    if extra_processor is not None:
        provider.add_span_processor(extra_processor)
    return provider


def configure_tracing(
    service: str,
    *,
    instance_id: str | None = None,
    span_file: str = "",
    extra_processor: SpanProcessor | None = None,
) -> TracerProvider:
    """Install the process-wide tracer provider with ``service.name=legato-<service>``."""
    global _provider
    if _provider is not None:
        if extra_processor is not None:
            _provider.add_span_processor(extra_processor)
        return _provider
    provider = build_tracer_provider(
        service, instance_id=instance_id, span_file=span_file, extra_processor=extra_processor
    )
    # The API allows one global provider per process; Legato's own code asks ``get_tracer`` instead,
    # which always uses the provider configured last.
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
    _tracers.clear()


_tracers: dict[str, tuple[trace.TracerProvider, trace.Tracer]] = {}


def get_tracer(name: str = "legato") -> trace.Tracer:
    """A cached tracer (``get_tracer`` builds a new one per call: costly on hot paths)."""
    source = _provider if _provider is not None else trace.get_tracer_provider()
    cached = _tracers.get(name)
    if cached is None or cached[0] is not source:
        cached = _tracers[name] = (source, source.get_tracer(name))
    return cached[1]


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
    When nobody records spans (``recording``) the span is the non-recording one the SDK would have made
    (the parent's trace, a new span id, not sampled), built directly: a third of the cost per message.
    """
    if not recording():
        yield from _unrecorded_span(headers)
        return
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


def remote_span_context(headers: Mapping[str, str] | None) -> SpanContext | None:
    """The sender's span context from W3C ``traceparent`` (and ``tracestate``) headers, by the
    propagator's rules; None when absent or invalid. Cheaper than ``extract_context`` for the usual
    headers without ``tracestate``."""
    if headers and "tracestate" in headers:
        ctx = trace.get_current_span(extract_context(headers)).get_span_context()
        return ctx if ctx.is_valid else None
    header = headers.get("traceparent") if headers else None
    if not header or len(header) > _TRACEPARENT_MAX:
        return None
    match = _TRACEPARENT.search(header)
    if not match:
        return None
    version, trace_id, span_id, flags = match.group(1), match.group(2), match.group(3), match.group(4)
    if version == "ff" or (version == "00" and match.group(5)):
        return None
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return SpanContext(
        int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=TraceFlags(int(flags, 16))
    )


_TRACEPARENT = TraceContextTextMapPropagator._TRACEPARENT_HEADER_FORMAT_RE
_TRACEPARENT_MAX = TraceContextTextMapPropagator._TRACEPARENT_MAXIMUM_LENGTH


def _unrecorded_span(headers: Mapping[str, str] | None) -> Iterator[Span]:
    """The span the SDK makes when its sampler drops it: the parent's trace (or a new one), a new span
    id, not sampled. The parent context holds nothing but the parent span, so it is not needed."""
    above = remote_span_context(headers)
    span = NonRecordingSpan(
        SpanContext(
            trace_id=above.trace_id if above is not None else new_trace_id(),
            span_id=new_span_id(),
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.DEFAULT),
        )
    )
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield span
    finally:
        otel_context.detach(token)


def _parent_context(parent: str | Context | None) -> Context:
    if isinstance(parent, Context):
        return parent
    return remote_parent_of(parent) or Context()


def sample_new_trace(trace_id: int, name: str) -> bool:
    """Whether a trace started here (not continued) is sampled, by this process's sampler.

    Used where a trace's ids are reserved long before its spans are recorded (a run's root), so the
    decision travels in the stored ``traceparent`` flags like any other.
    """
    source = _provider if _provider is not None else trace.get_tracer_provider()
    sampler = getattr(source, "sampler", None)
    if sampler is None:
        return True
    return bool(sampler.should_sample(None, trace_id, name).decision.is_sampled())


def start_span_with_ids(
    name: str,
    *,
    span_id: int,
    trace_id: int | None = None,
    parent: str | Context | None = None,
    start_time_ns: int | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, AttributeValue] | None = None,
    links: Sequence[Link] | None = None,
) -> Span:
    """Start (not end) a span whose span id, and trace id when it is a root, were chosen earlier.

    ``parent`` is a ``traceparent`` string or a context; with a valid parent the span joins the parent's
    trace and ``trace_id`` is ignored. Not current: end it with ``span.end(end_time=…)``.
    """
    ctx = _parent_context(parent)
    with forced_ids(trace_id=trace_id, span_id=span_id):
        return get_tracer().start_span(
            name,
            context=ctx,
            kind=kind,
            attributes=dict(attributes or {}),
            links=list(links or ()),
            start_time=start_time_ns,
        )


def emit_span(
    name: str,
    *,
    span_id: int,
    start_time_ns: int,
    end_time_ns: int,
    trace_id: int | None = None,
    parent: str | Context | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, AttributeValue] | None = None,
    links: Sequence[Link] | None = None,
    events: Sequence[tuple[str, int, Mapping[str, AttributeValue]]] = (),
    error: str | None = None,
) -> None:
    """Record a whole span after the fact, with reserved ids and explicit times (e.g. ``workflow.run``
    at run end, ``step.attempt`` when its result is applied). ``events`` are ``(name, time_ns, attrs)``;
    ``error`` sets an ERROR status with that description. Nothing at all when nobody records spans."""
    if not recording():
        return
    span = start_span_with_ids(
        name,
        span_id=span_id,
        trace_id=trace_id,
        parent=parent,
        start_time_ns=start_time_ns,
        kind=kind,
        attributes=attributes,
        links=links,
    )
    for event_name, at_ns, event_attrs in events:
        span.add_event(event_name, attributes=dict(event_attrs), timestamp=at_ns)
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end(end_time=max(end_time_ns, start_time_ns))
