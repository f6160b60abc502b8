"""The metrics facade: names, bounded attributes, no-op when unconfigured, Prometheus text rendering."""

from __future__ import annotations

import asyncio
import importlib
import re
from collections.abc import Iterator

import pytest
import structlog.testing
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData

from legato.runtime.metrics_server import MetricsServer
from legato.telemetry import configure_metrics, metrics, shutdown_metrics
from legato.telemetry.metrics import FORBIDDEN_ATTRIBUTES, INSTRUMENTS, LegatoMetrics
from legato.telemetry.prometheus import escape_label_value, metric_name, render_prometheus

EXPECTED = {
    "legato.runs.started": ("counter", {"strategy", "trigger"}),
    "legato.runs.finished": ("counter", {"status", "strategy"}),
    "legato.queue.depth": ("gauge", {"strategy", "reason"}),
    "legato.workflows.blocked": ("gauge", set()),
    "legato.step.duration": ("histogram", {"step_type", "outcome"}),
    "legato.scheduler.batch.messages": ("histogram", set()),
    "legato.scheduler.batch.duration": ("histogram", {"phase"}),
    "legato.consumer.redeliveries": ("counter", {"stream"}),
    "legato.consumer.dead_letters": ("counter", {"stream"}),
    "legato.consumer.handled": ("counter", {"stream", "result"}),
    "legato.outbox.lag": ("gauge", set()),
    "legato.outbox.published": ("counter", set()),
    "legato.signals.ingested": ("counter", {"status"}),
    "legato.joins.pending": ("gauge", set()),
    "legato.api.requests": ("counter", {"endpoint", "result"}),
}


@pytest.fixture
def configured() -> Iterator[tuple[LegatoMetrics, InMemoryMetricReader]]:
    reader = InMemoryMetricReader()
    m = configure_metrics("test", instance_id="unit-1", prometheus=True, readers=[reader])
    try:
        yield m, reader
    finally:
        shutdown_metrics()


def points(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, object], object]]]:
    data = reader.get_metrics_data()
    out: dict[str, list[tuple[dict[str, object], object]]] = {}
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                for p in m.data.data_points:
                    value = getattr(p, "value", None)
                    if value is None:
                        value = (getattr(p, "count", None), getattr(p, "sum", None))
                    out.setdefault(m.name, []).append((dict(p.attributes or {}), value))
    return out


def test_every_instrument_is_defined_once_with_its_bounded_attributes() -> None:
    got = {s.name: (s.kind, set(s.attributes)) for s in INSTRUMENTS}
    assert got == EXPECTED
    assert len(INSTRUMENTS) == len(got)
    for spec in INSTRUMENTS:
        assert not FORBIDDEN_ATTRIBUTES & set(spec.attributes), spec.name


def test_unconfigured_metrics_are_no_ops() -> None:
    shutdown_metrics()
    m = metrics()
    assert not m.enabled and m.prometheus is None
    m.runs_started.add(strategy="parallel", trigger="api")
    m.step_duration.record(1.0, step_type="shell", outcome="succeeded")
    m.queue_depth.set(3, strategy="parallel", reason="queued")
    assert m.queue_depth.value(strategy="parallel", reason="queued") is None


def test_no_endpoint_and_no_port_means_nothing_is_set_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", raising=False)
    assert configure_metrics("executor") is metrics()
    assert not metrics().enabled


def test_otlp_endpoint_adds_a_periodic_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    # The package exports the function ``metrics``; the module of the same name is reached by path.
    metrics_module = importlib.import_module("legato.telemetry.metrics")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "3600000")
    readers = metrics_module._otlp_readers()
    assert len(readers) == 1
    assert type(readers[0]).__name__ == "PeriodicExportingMetricReader"
    assert readers[0]._export_interval_millis == 3600000  # type: ignore[attr-defined]
    readers[0].shutdown(timeout_millis=100)
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    assert metrics_module._otlp_readers() == []


def test_counters_histograms_and_gauges_record_with_their_attributes(
    configured: tuple[LegatoMetrics, InMemoryMetricReader],
) -> None:
    m, reader = configured
    m.runs_started.add(strategy="parallel", trigger="api")
    m.runs_started.add(2, strategy="parallel", trigger="api")
    m.runs_started.add(strategy="sequential", trigger="cron")
    m.step_duration.record(0.2, step_type="shell", outcome="succeeded")
    m.step_duration.record(0.4, step_type="shell", outcome="succeeded")
    m.queue_depth.set(5, strategy="sequential", reason="queued")
    m.queue_depth.set(7, strategy="sequential", reason="queued")
    m.joins_pending.add(2)
    m.joins_pending.add(-1)
    m.outbox_lag.set(1.5)
    got = points(reader)
    assert sorted(got["legato.runs.started"], key=str) == sorted(
        [({"strategy": "parallel", "trigger": "api"}, 3), ({"strategy": "sequential", "trigger": "cron"}, 1)],
        key=str,
    )
    [(attrs, (count, total))] = got["legato.step.duration"]  # type: ignore[misc]
    assert attrs == {"step_type": "shell", "outcome": "succeeded"}
    assert count == 2 and total == pytest.approx(0.6)
    assert got["legato.queue.depth"] == [({"strategy": "sequential", "reason": "queued"}, 7)]
    assert got["legato.joins.pending"] == [({}, 1)]
    assert got["legato.outbox.lag"] == [({}, 1.5)]


def test_ids_are_never_metric_attributes(configured: tuple[LegatoMetrics, InMemoryMetricReader]) -> None:
    m, reader = configured
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            m.runs_finished.add(status="failed", strategy="parallel", workflow_id="wf", instance_id="run-1")
        m.consumer_handled.add(stream="LEGATO_WORK", result="acked", step_id="s1")
    got = points(reader)
    assert got["legato.runs.finished"] == [({"status": "failed", "strategy": "parallel"}, 3)]
    assert got["legato.consumer.handled"] == [({"stream": "LEGATO_WORK", "result": "acked"}, 1)]
    dropped = sorted((e["metric"], e["attribute"]) for e in logs if e["event"] == "metric_attribute_dropped")
    # Once per (instrument, key), not once per call.
    assert dropped == [
        ("legato.consumer.handled", "step_id"),
        ("legato.runs.finished", "instance_id"),
        ("legato.runs.finished", "workflow_id"),
    ]


def test_gauge_callbacks_forget_and_long_values(
    configured: tuple[LegatoMetrics, InMemoryMetricReader],
) -> None:
    m, reader = configured
    m.queue_depth.set(1, strategy="parallel", reason="queued")
    m.queue_depth.forget(strategy="parallel", reason="queued")
    m.workflows_blocked.observe(lambda: [(4, {})])
    m.signals_ingested.add(status="x" * 500)
    got = points(reader)
    assert "legato.queue.depth" not in got
    assert got["legato.workflows.blocked"] == [({}, 4)]
    [(attrs, _)] = got["legato.signals.ingested"]
    assert attrs == {"status": "x" * 64}


def test_a_failing_gauge_callback_does_not_break_collection(
    configured: tuple[LegatoMetrics, InMemoryMetricReader],
) -> None:
    m, reader = configured

    def broken() -> list[tuple[float, dict[str, str]]]:
        raise RuntimeError("boom")

    m.joins_pending.observe(broken)
    m.joins_pending.set(2)
    m.outbox_published.add(3)
    got = points(reader)
    assert got["legato.joins.pending"] == [({}, 2)]
    assert got["legato.outbox.published"] == [({}, 3)]


# ---------------------------------------------------------------------------------- Prometheus text


def sample_lines(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def test_prometheus_text_for_a_counter_a_histogram_and_a_gauge(
    configured: tuple[LegatoMetrics, InMemoryMetricReader],
) -> None:
    m, _ = configured
    assert m.prometheus is not None
    m.api_requests.add(endpoint="instance.start", result="ok")
    m.api_requests.add(endpoint="instance.start", result="ok")
    m.step_duration.record(0.02, step_type="noop", outcome="succeeded")
    m.step_duration.record(3.0, step_type="noop", outcome="succeeded")
    m.outbox_lag.set(0.25)
    text = render_prometheus(m.prometheus.scrape())
    lines = text.splitlines()
    assert "# TYPE legato_api_requests_total counter" in lines
    assert "# HELP legato_api_requests_total API requests served" in lines
    assert "# TYPE legato_step_duration_seconds histogram" in lines
    assert "# TYPE legato_outbox_lag_seconds gauge" in lines
    samples = sample_lines(text)
    assert samples['legato_api_requests_total{endpoint="instance.start",result="ok"}'] == 2
    base = 'legato_step_duration_seconds_bucket{outcome="succeeded",step_type="noop",le='
    assert samples[base + '"0.01"}'] == 0
    assert samples[base + '"0.025"}'] == 1  # buckets are cumulative
    assert samples[base + '"2.5"}'] == 1
    assert samples[base + '"5"}'] == 2
    assert samples[base + '"+Inf"}'] == 2
    assert samples['legato_step_duration_seconds_count{outcome="succeeded",step_type="noop"}'] == 2
    assert samples['legato_step_duration_seconds_sum{outcome="succeeded",step_type="noop"}'] == pytest.approx(
        3.02
    )
    assert samples["legato_outbox_lag_seconds"] == 0.25
    assert any(
        k.startswith("target_info{")
        and 'service_name="legato-test"' in k
        and 'service_instance_id="unit-1"' in k
        for k in samples
    )
    # Every sample line is well formed: name{labels} value
    pattern = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? \S+$')
    for line in lines:
        assert line.startswith("#") or pattern.match(line), line


def test_prometheus_label_values_are_escaped(configured: tuple[LegatoMetrics, InMemoryMetricReader]) -> None:
    m, _ = configured
    assert m.prometheus is not None
    m.signals_ingested.add(status='a"b\\c\nd')
    text = render_prometheus(m.prometheus.scrape())
    assert 'legato_signals_ingested_total{status="a\\"b\\\\c\\nd"} 1' in text.splitlines()
    assert escape_label_value('x"\\\n') == 'x\\"\\\\\\n'


def test_prometheus_names() -> None:
    assert metric_name("legato.step.duration", "s") == "legato_step_duration_seconds"
    assert metric_name("legato.outbox.lag", "s") == "legato_outbox_lag_seconds"
    assert metric_name("legato.runs.started", "{run}") == "legato_runs_started"
    assert metric_name("9lives-x", "") == "_9lives_x"
    assert render_prometheus(None) == ""
    assert render_prometheus(MetricsData(resource_metrics=[])) == ""


async def test_metrics_endpoint_serves_the_text_format(
    configured: tuple[LegatoMetrics, InMemoryMetricReader],
) -> None:
    m, _ = configured
    m.outbox_published.add(4)
    server = MetricsServer("127.0.0.1", 0)
    task = asyncio.create_task(server.run())
    await asyncio.wait_for(server.ready.wait(), 5)
    assert server.port

    async def get(path: str, method: str = "GET") -> tuple[str, dict[str, str], str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        raw = (await reader.read()).decode()
        writer.close()
        head, _, body = raw.partition("\r\n\r\n")
        status, *header_lines = head.split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
        return status, headers, body

    try:
        status, headers, body = await get("/metrics")
        assert status == "HTTP/1.1 200 OK"
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        assert int(headers["content-length"]) == len(body.encode())
        assert "legato_outbox_published_total 4" in body.splitlines()
        status, _, body = await get("/metrics", "HEAD")
        assert status == "HTTP/1.1 200 OK" and body == ""
        status, _, _ = await get("/nope")
        assert status.startswith("HTTP/1.1 404")
        status, _, _ = await get("/metrics", "POST")
        assert status.startswith("HTTP/1.1 405")
        assert server.scrapes == 2
    finally:
        await server.shutdown()
        await asyncio.wait_for(task, 5)
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", server.port)


async def test_a_busy_metrics_port_does_not_stop_the_service() -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        server = MetricsServer("127.0.0.1", port)
        task = asyncio.create_task(server.run())
        await asyncio.wait_for(server.ready.wait(), 5)
        assert server.port is None and not task.done()
        await server.shutdown()
        await asyncio.wait_for(task, 5)
    finally:
        blocker.close()
        await blocker.wait_closed()
