"""Every Legato metric, defined in one place, and a small typed facade to record them.

Record through ``metrics()``; attributes are keyword arguments from the instrument's fixed set::

    from legato.telemetry import metrics

    metrics().runs_started.add(strategy="parallel", trigger="api")
    metrics().runs_finished.add(status="succeeded", strategy="parallel")
    metrics().step_duration.record(0.42, step_type="shell", outcome="succeeded")
    metrics().queue_depth.set(12, strategy="sequential", reason="queued")
    metrics().joins_pending.add(1)          # gauges also take deltas, and ``forget(**attrs)``

Attribute sets are bounded: each instrument accepts only the keys listed in ``INSTRUMENTS``; any other
key (a workflow, run or step id would make one series per run) is dropped, with one warning per key.
Values are strings (truncated to 64 characters).

``configure_metrics(service)`` (called by ``ServiceHost`` beside tracing) builds the MeterProvider: an
OTLP exporter when ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set
(protocol, headers, TLS, temporality from the standard ``OTEL_EXPORTER_OTLP[_METRICS]_*`` variables;
every ``OTEL_METRIC_EXPORT_INTERVAL`` ms), and a pull reader for the Prometheus endpoint when asked.
With neither, every instrument is a no-op that returns at its first line.

Gauges hold "this process's view" (a scheduler replica reports the queues of the workflows it owns):
sum them across replicas.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.metrics import Counter as OtelCounter
from opentelemetry.metrics import Histogram as OtelHistogram
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader, PeriodicExportingMetricReader

from legato.telemetry.logging import get_logger
from legato.telemetry.prometheus import PrometheusReader
from legato.telemetry.resource import service_resource
from legato.telemetry.tracing import otlp_endpoint_set, otlp_protocol, sdk_disabled

log = get_logger("legato.telemetry")

Kind = Literal["counter", "histogram", "gauge"]
AttrValue = str | int | bool
MAX_VALUE_LEN = 64
# Seconds: from a noop step to a long batch job.
DURATION_BUCKETS: tuple[float, ...] = (
    *(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    *(10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0),
)
# A workflow actor's batch: how many messages it applied, and its time (from a sub-millisecond batch of
# one message to a foreach's hundreds).
BATCH_MESSAGE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
BATCH_SECONDS_BUCKETS: tuple[float, ...] = (
    *(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05),
    *(0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
)
# Never metric attributes: one series per run (or step, or attempt) is unbounded.
FORBIDDEN_ATTRIBUTES = frozenset(
    {
        "workflow_id",
        "instance_id",
        "run_id",
        "step_id",
        "attempt_id",
        "attempt",
        "trace_id",
        "span_id",
        "msg_id",
    }
)


@dataclass(frozen=True)
class InstrumentSpec:
    """One metric instrument: name, kind, unit, description and the attributes it may carry."""

    name: str
    kind: Kind
    unit: str
    description: str
    attributes: tuple[str, ...] = ()


INSTRUMENTS: tuple[InstrumentSpec, ...] = (
    InstrumentSpec("legato.runs.started", "counter", "{run}", "Runs created", ("strategy", "trigger")),
    InstrumentSpec("legato.runs.finished", "counter", "{run}", "Runs that ended", ("status", "strategy")),
    InstrumentSpec(
        "legato.queue.depth", "gauge", "{run}", "Runs waiting in workflow queues", ("strategy", "reason")
    ),
    InstrumentSpec("legato.workflows.blocked", "gauge", "{workflow}", "strict_sequential queues blocked"),
    InstrumentSpec(
        "legato.step.duration",
        "histogram",
        "s",
        "Step attempt run time as the executor saw it",
        ("step_type", "outcome"),
    ),
    InstrumentSpec(
        "legato.scheduler.batch.messages",
        "histogram",
        "{message}",
        "Messages a workflow actor applied in one batch (one transaction)",
    ),
    InstrumentSpec(
        "legato.scheduler.batch.duration",
        "histogram",
        "s",
        "A workflow actor's committed batch, by phase: write (its final statement, built, run and "
        "committed), compute (the rest: computing, any reads and locks, handing its rows over); their "
        "sum is the actor's busy time",
        ("phase",),
    ),
    InstrumentSpec(
        "legato.consumer.redeliveries", "counter", "{message}", "Messages delivered again", ("stream",)
    ),
    InstrumentSpec(
        "legato.consumer.dead_letters", "counter", "{message}", "Messages dead-lettered", ("stream",)
    ),
    InstrumentSpec(
        "legato.consumer.handled",
        "counter",
        "{message}",
        "Messages handled by consumer loops, by outcome",
        ("stream", "result"),
    ),
    InstrumentSpec("legato.outbox.lag", "gauge", "s", "Age of the oldest outbox row the relay saw"),
    InstrumentSpec("legato.outbox.published", "counter", "{message}", "Outbox rows published"),
    InstrumentSpec("legato.signals.ingested", "counter", "{signal}", "Signals stored", ("status",)),
    InstrumentSpec("legato.joins.pending", "gauge", "{tuple}", "Joined-signal tuples waiting for members"),
    InstrumentSpec(
        "legato.api.requests", "counter", "{request}", "API requests served", ("endpoint", "result")
    ),
)
SPECS: dict[str, InstrumentSpec] = {s.name: s for s in INSTRUMENTS}


class _Bounded:
    """Attribute filtering shared by every instrument wrapper."""

    def __init__(self, spec: InstrumentSpec, enabled: bool) -> None:
        self.spec = spec
        self.enabled = enabled
        self._allowed = frozenset(spec.attributes)
        self._warned: set[str] = set()

    def attributes(self, given: Mapping[str, AttrValue]) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, value in given.items():
            if key in self._allowed:
                text = value if isinstance(value, str) else str(value).lower()
                out[key] = text[:MAX_VALUE_LEN]
            elif key not in self._warned:
                self._warned.add(key)
                log.warning(
                    "metric_attribute_dropped",
                    metric=self.spec.name,
                    attribute=key,
                    allowed=list(self.spec.attributes),
                )
        return out


class Counter(_Bounded):
    """A monotonic count: ``add(n=1, **attributes)``."""

    def __init__(self, spec: InstrumentSpec, instrument: OtelCounter | None) -> None:
        super().__init__(spec, instrument is not None)
        self._instrument = instrument

    def add(self, amount: float = 1, **attributes: AttrValue) -> None:
        if self._instrument is None or amount <= 0:
            return
        self._instrument.add(amount, self.attributes(attributes))


class Histogram(_Bounded):
    """A distribution: ``record(value, **attributes)``."""

    def __init__(self, spec: InstrumentSpec, instrument: OtelHistogram | None) -> None:
        super().__init__(spec, instrument is not None)
        self._instrument = instrument

    def record(self, value: float, **attributes: AttrValue) -> None:
        if self._instrument is None or value < 0:
            return
        self._instrument.record(value, self.attributes(attributes))


GaugeCallback = Callable[[], Iterable[tuple[float, Mapping[str, AttrValue]]]]


class Gauge(_Bounded):
    """A current value per attribute set: ``set``, ``add`` (a delta), ``forget``, or ``observe(callback)``.

    Values are read when metrics are collected (an export or a scrape, possibly in another thread):
    callbacks must be quick and thread-safe, returning ``(value, attributes)`` pairs.
    """

    def __init__(self, spec: InstrumentSpec, meter: Meter | None) -> None:
        super().__init__(spec, meter is not None)
        self._values: dict[frozenset[tuple[str, str]], float] = {}
        self._callbacks: list[GaugeCallback] = []
        self._lock = threading.Lock()
        if meter is not None:
            meter.create_observable_gauge(
                spec.name, callbacks=[self._observe], unit=spec.unit, description=spec.description
            )

    def set(self, value: float, **attributes: AttrValue) -> None:
        if not self.enabled:
            return
        key = frozenset(self.attributes(attributes).items())
        with self._lock:
            self._values[key] = value

    def add(self, delta: float, **attributes: AttrValue) -> None:
        if not self.enabled:
            return
        key = frozenset(self.attributes(attributes).items())
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + delta

    def forget(self, **attributes: AttrValue) -> None:
        """Stop reporting the series for these attributes."""
        key = frozenset(self.attributes(attributes).items())
        with self._lock:
            self._values.pop(key, None)

    def observe(self, callback: GaugeCallback) -> None:
        """Report what ``callback`` returns at every collection (in addition to values ``set`` here)."""
        if self.enabled:
            with self._lock:
                self._callbacks.append(callback)

    def value(self, **attributes: AttrValue) -> float | None:
        """The value last set for these attributes (tests and diagnostics)."""
        key = frozenset(self.attributes(attributes).items())
        with self._lock:
            return self._values.get(key)

    def _observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            values = list(self._values.items())
            callbacks = list(self._callbacks)
        out = [Observation(v, dict(k)) for k, v in values]
        for cb in callbacks:
            try:
                out.extend(Observation(v, self.attributes(a)) for v, a in cb())
            except Exception as exc:
                log.warning("metric_callback_failed", metric=self.spec.name, error=repr(exc))
        return out


class LegatoMetrics:
    """The instruments of one process (all no-ops until ``configure_metrics`` found somewhere to send them)."""

    def __init__(self, meter: Meter | None = None, *, prometheus: PrometheusReader | None = None) -> None:
        self.enabled = meter is not None
        self.prometheus = prometheus
        self.runs_started = self._counter(meter, "legato.runs.started")
        self.runs_finished = self._counter(meter, "legato.runs.finished")
        self.queue_depth = Gauge(SPECS["legato.queue.depth"], meter)
        self.workflows_blocked = Gauge(SPECS["legato.workflows.blocked"], meter)
        self.step_duration = self._histogram(meter, "legato.step.duration", DURATION_BUCKETS)
        self.batch_messages = self._histogram(meter, "legato.scheduler.batch.messages", BATCH_MESSAGE_BUCKETS)
        self.batch_duration = self._histogram(meter, "legato.scheduler.batch.duration", BATCH_SECONDS_BUCKETS)
        self.consumer_redeliveries = self._counter(meter, "legato.consumer.redeliveries")
        self.consumer_dead_letters = self._counter(meter, "legato.consumer.dead_letters")
        self.consumer_handled = self._counter(meter, "legato.consumer.handled")
        self.outbox_lag = Gauge(SPECS["legato.outbox.lag"], meter)
        self.outbox_published = self._counter(meter, "legato.outbox.published")
        self.signals_ingested = self._counter(meter, "legato.signals.ingested")
        self.joins_pending = Gauge(SPECS["legato.joins.pending"], meter)
        self.api_requests = self._counter(meter, "legato.api.requests")

    @staticmethod
    def _counter(meter: Meter | None, name: str) -> Counter:
        spec = SPECS[name]
        inst = meter.create_counter(name, unit=spec.unit, description=spec.description) if meter else None
        return Counter(spec, inst)

    @staticmethod
    def _histogram(meter: Meter | None, name: str, buckets: Sequence[float]) -> Histogram:
        spec = SPECS[name]
        inst = (
            meter.create_histogram(
                name,
                unit=spec.unit,
                description=spec.description,
                explicit_bucket_boundaries_advisory=list(buckets),
            )
            if meter
            else None
        )
        return Histogram(spec, inst)


_DISABLED = LegatoMetrics()
_current: LegatoMetrics = _DISABLED
_provider: MeterProvider | None = None


def metrics() -> LegatoMetrics:
    """This process's instruments (no-ops when metrics are not configured)."""
    return _current


def _otlp_readers() -> list[MetricReader]:
    wanted = [x.strip().lower() for x in (os.environ.get("OTEL_METRICS_EXPORTER") or "otlp").split(",")]
    if sdk_disabled() or "otlp" not in wanted or not otlp_endpoint_set("METRICS"):
        return []
    if otlp_protocol("METRICS").startswith("http"):
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter as HttpMetricExporter,
        )

        exporter: MetricExporter = HttpMetricExporter()
    else:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetricExporter,
        )

        exporter = GrpcMetricExporter()
    # The reader takes OTEL_METRIC_EXPORT_INTERVAL / OTEL_METRIC_EXPORT_TIMEOUT from the environment.
    return [PeriodicExportingMetricReader(exporter)]


def configure_metrics(
    service: str,
    *,
    instance_id: str | None = None,
    prometheus: bool = False,
    readers: Sequence[MetricReader] = (),
) -> LegatoMetrics:
    """Build this process's instruments: OTLP export when an endpoint is set, a Prometheus pull reader
    when ``prometheus`` (the ``/metrics`` endpoint renders from it), plus any given ``readers``."""
    global _current, _provider
    shutdown_metrics()
    all_readers: list[MetricReader] = [*_otlp_readers(), *readers]
    pull = PrometheusReader() if prometheus else None
    if pull is not None:
        all_readers.append(pull)
    if not all_readers:
        return _current
    _provider = MeterProvider(
        metric_readers=all_readers, resource=service_resource(service, instance_id=instance_id)
    )
    _current = LegatoMetrics(_provider.get_meter("legato"), prometheus=pull)
    return _current


def shutdown_metrics() -> None:
    """Export what is left and stop (called at the end of a service's shutdown)."""
    global _current, _provider
    provider, _provider, _current = _provider, None, _DISABLED
    if provider is not None:
        try:
            provider.shutdown(timeout_millis=5_000)
        except Exception as exc:
            log.warning("metrics_shutdown_failed", error=repr(exc))
