"""Spans of a run are recorded as facts in the unit of work and emitted only when asked (after commit)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from legato.core.reasons import Queued
from legato.scheduler import run_spans
from legato.scheduler.span_facts import RunEnded, Waited
from legato.scheduler.state import AttemptState, InstanceState, StepState, UnitOfWork
from legato.telemetry import traceparent_for
from legato.telemetry.tracing import build_tracer_provider

tracing = importlib.import_module("legato.telemetry.tracing")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def memory(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    for var in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "LEGATO_TEST_SPAN_FILE"):
        monkeypatch.delenv(var, raising=False)
    exporter = InMemorySpanExporter()
    provider = build_tracer_provider("unit", instance_id="u-1", extra_processor=SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_provider", provider)
    try:
        yield exporter
    finally:
        provider.shutdown()


def a_run() -> InstanceState:
    inst = InstanceState(
        id="run-1",
        workflow_id="wf",
        version=3,
        trigger_key="k",
        trigger={"kind": "api"},
        status="running",
        params={},
        run_params={},
        created_at=T0,
    )
    inst.traceparent = traceparent_for(0xABC, 0x123, sampled=True)
    return inst


def test_facts_are_recorded_and_become_spans_only_when_emitted(memory: InMemorySpanExporter) -> None:
    uow = UnitOfWork()
    inst = a_run()
    run_spans.waiting(uow, inst, T0, Queued(message="behind run-0"), None)
    st = StepState(instance_id=inst.id, step_id="s", status="running")
    at = AttemptState(
        id="a-1",
        instance_id=inst.id,
        step_id="s",
        attempt=1,
        status="dispatched",
        queue="q",
        dispatched_at=T0,
    )
    assert run_spans.attempt_traceparent(inst, at) is not None
    at.status, at.started_at, at.ended_at = "failed", T0, T0 + timedelta(seconds=2)
    at.error = "exit 1"
    run_spans.attempt_ended(uow, inst, st, at, "shell")
    inst.status, inst.ended_at, inst.error = "failed", T0 + timedelta(seconds=3), "step s failed"
    run_spans.run_ended(uow, inst, "sequential")
    # The run restarts and ends again within the same batch: each end keeps the values of its moment.
    inst.status, inst.error, inst.run_number = "succeeded", None, 2
    run_spans.run_ended(uow, inst, "sequential")
    assert [type(f) for f in uow.spans][:1] == [Waited]
    assert memory.get_finished_spans() == ()

    run_spans.emit(uow.spans)

    spans = {
        (s.name, s.attributes.get("legato.run_number") if s.attributes else None): s
        for s in memory.get_finished_spans()
    }
    assert set(spans) == {
        ("run.waiting", None),
        ("step.attempt", None),
        ("workflow.run", 1),
        ("workflow.run", 2),
    }
    attempt = spans[("step.attempt", None)]
    assert attempt.context.span_id == int(at.span_id or "0", 16)
    assert attempt.status.description == "exit 1"
    first, second = spans[("workflow.run", 1)], spans[("workflow.run", 2)]
    assert first.context.span_id == second.context.span_id == 0x123
    assert first.attributes is not None and first.attributes["legato.status"] == "failed"
    assert second.attributes is not None and second.attributes["legato.status"] == "succeeded"
    assert first.status.description == "step s failed" and second.status.description is None


def test_a_run_without_a_trace_records_nothing() -> None:
    uow = UnitOfWork()
    inst = a_run()
    inst.traceparent = None
    run_spans.point(uow, inst, "timer.fired", T0, kind="retry")
    run_spans.run_ended(uow, inst, "parallel")
    assert uow.spans == []


def test_run_ended_snapshots_the_run() -> None:
    uow = UnitOfWork()
    inst = a_run()
    inst.status = "stopped"
    run_spans.run_ended(uow, inst, "parallel")
    inst.status = "running"
    (fact,) = uow.spans
    assert isinstance(fact, RunEnded) and fact.status == "stopped" and fact.strategy == "parallel"
