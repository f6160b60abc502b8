"""Log lines: JSON with the bound context and the active trace ids, console on a terminal, level by env."""

from __future__ import annotations

import importlib
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from legato.bus.consumer import Delivery
from legato.executor.attempt import AttemptProcessor
from legato.executor.runners.noop import NoopRunner
from legato.protocol.messages import WorkItem
from legato.telemetry import (
    bind_context,
    configure_logging,
    get_logger,
    new_span_context_ids,
    traceparent_for,
)
from legato.telemetry.tracing import build_tracer_provider

tracing = importlib.import_module("legato.telemetry.tracing")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root.handlers[:] = handlers
    root.setLevel(level)


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    memory = InMemorySpanExporter()
    provider: TracerProvider = build_tracer_provider("executor", extra_processor=SimpleSpanProcessor(memory))
    monkeypatch.setattr(tracing, "_provider", provider)
    yield memory
    provider.shutdown()


def test_json_lines_carry_service_bound_context_and_trace_ids(traced: InMemorySpanExporter) -> None:
    out = io.StringIO()
    configure_logging("trigger", level="debug", fmt="auto", stream=out)  # not a TTY: JSON
    log = get_logger("t")
    with (
        bind_context(workflow_id="wf", instance_id="run-1", step_id=None),
        tracing.get_tracer().start_as_current_span("x") as span,
    ):
        log.info("instance_started", extra_fact=3)
    log.info("outside")
    first, second = json_lines(out)
    ctx = span.get_span_context()
    assert first["event"] == "instance_started" and first["level"] == "info"
    assert first["service"] == "trigger"
    assert first["workflow_id"] == "wf" and first["instance_id"] == "run-1" and "step_id" not in first
    assert first["trace_id"] == f"{ctx.trace_id:032x}" and first["span_id"] == f"{ctx.span_id:016x}"
    assert first["extra_fact"] == 3 and "timestamp" in first
    assert second["service"] == "trigger"
    assert "workflow_id" not in second and "trace_id" not in second  # context restored afterwards


def test_console_rendering_on_a_terminal() -> None:
    out = TTY()
    configure_logging("executor", stream=out)
    get_logger().warning("attempt_lost", deliveries=2)
    text = out.getvalue()
    assert "attempt_lost" in text and "deliveries" in text
    with pytest.raises(ValueError):
        json.loads(text.splitlines()[0])


def test_format_and_level_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEGATO_LOG_LEVEL", "warning")
    monkeypatch.setenv("LEGATO_LOG_FORMAT", "json")
    out = TTY()  # JSON even on a terminal when asked
    configure_logging("scheduler", stream=out)
    log = get_logger()
    log.info("quiet")
    log.warning("loud")
    assert [r["event"] for r in json_lines(out)] == ["loud"]


def test_bad_log_settings_fail_with_the_variable_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="LEGATO_LOG_LEVEL"):
        configure_logging("x", level="chatty", stream=io.StringIO())
    with pytest.raises(ValueError, match="LEGATO_LOG_FORMAT"):
        configure_logging("x", fmt="xml", stream=io.StringIO())


class RecordingPublisher:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def publish(self, msg: Any) -> None:
        self.sent.append(msg)


async def test_executor_log_lines_name_the_run_step_attempt_and_trace(traced: InMemorySpanExporter) -> None:
    out = io.StringIO()
    configure_logging("executor", level="info", fmt="json", stream=out)
    trace_id, attempt_span = new_span_context_ids()
    item = WorkItem(
        attempt_id="run-1-abc-2",
        workflow_id="wf",
        instance_id="run-1",
        step_id="extract",
        attempt=2,
        step_type="noop",
        reply_subject="legato.event.0.wf",
    )
    headers = {"traceparent": traceparent_for(trace_id, attempt_span)}
    publisher = RecordingPublisher()
    processor = AttemptProcessor(publisher, {"noop": NoopRunner()}, executor_id="e1")  # type: ignore[arg-type]
    delivery: Delivery[WorkItem] = Delivery(
        message=item,
        raw=None,
        subject="legato.work.default",
        headers=headers,
        num_delivered=1,
        stream_seq=1,
        msg_id=item.attempt_id,
    )  # type: ignore[arg-type]
    await processor.handle(delivery)
    lines = [r for r in json_lines(out) if r["event"] in ("attempt_started", "attempt_finished")]
    assert [r["event"] for r in lines] == ["attempt_started", "attempt_finished"]
    [execute] = [s for s in traced.get_finished_spans() if s.name == "execute noop"]
    for r in lines:
        assert r["service"] == "executor"
        assert (r["workflow_id"], r["instance_id"], r["step_id"], r["attempt"]) == (
            "wf",
            "run-1",
            "extract",
            2,
        )
        assert r["attempt_id"] == "run-1-abc-2"
        assert r["trace_id"] == f"{trace_id:032x}"
        assert r["span_id"] == f"{execute.get_span_context().span_id:016x}"
    # The execute span is the direct child of the attempt span the scheduler reserved.
    assert execute.parent is not None and execute.parent.span_id == attempt_span
    # The result goes back with the execute span as parent, so the scheduler's apply joins the trace.
    [result] = publisher.sent
    assert result.headers["traceparent"].split("-")[1:3] == [
        f"{trace_id:032x}",
        f"{execute.get_span_context().span_id:016x}",
    ]
