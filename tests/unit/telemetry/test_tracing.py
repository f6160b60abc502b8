"""Tracing set-up from OTEL_* variables, the span file test hook, and spans with reserved ids."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind

from legato.telemetry import (
    emit_span,
    extract_context,
    forced_ids,
    get_tracer,
    inject_headers,
    new_span_context_ids,
    parse_traceparent,
    remote_parent,
    traceparent_for,
)
from legato.telemetry.span_file import SpanFileExporter, read_span_file
from legato.telemetry.tracing import build_tracer_provider, sampler_named

tracing = importlib.import_module("legato.telemetry.tracing")


@pytest.fixture
def provider(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    for var in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    memory = InMemorySpanExporter()
    p = build_tracer_provider("unit", instance_id="u-1", extra_processor=SimpleSpanProcessor(memory))
    monkeypatch.setattr(tracing, "_provider", p)
    try:
        yield p, memory
    finally:
        p.shutdown()


def test_resource_names_the_service_and_merges_otel_resource_attributes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=staging,service.name=ignored")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "also-ignored")
    p = build_tracer_provider("scheduler", instance_id="replica-2")
    attrs = p.resource.attributes
    assert attrs["service.name"] == "legato-scheduler"
    assert attrs["service.namespace"] == "legato"
    assert attrs["service.instance.id"] == "replica-2"
    assert attrs["deployment.environment"] == "staging"
    p.shutdown()


def processors(p: TracerProvider) -> list[object]:
    return list(p._active_span_processor._span_processors)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}, ["BatchSpanProcessor:OTLPSpanExporter:grpc"]),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            },
            ["BatchSpanProcessor:OTLPSpanExporter:http"],
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9/v1/traces",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            },
            ["BatchSpanProcessor:OTLPSpanExporter:http"],
        ),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_TRACES_EXPORTER": "none"}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SDK_DISABLED": "true"}, []),
    ],
)
def test_exporters_follow_the_otel_variables(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: list[str]
) -> None:
    for var in list(os.environ):
        if var.startswith("OTEL_"):
            monkeypatch.delenv(var)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    p = build_tracer_provider("trigger")
    got = []
    for proc in processors(p):
        exporter = proc._batch_processor._exporter  # type: ignore[attr-defined]
        kind = "http" if "http" in type(exporter).__module__ else "grpc"
        got.append(f"{type(proc).__name__}:{type(exporter).__name__}:{kind}")
    assert got == expected
    p.shutdown()


def test_bad_protocol_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        build_tracer_provider("trigger")


def test_span_file_gets_one_json_line_per_span(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "spans" / "all.jsonl"
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    p = build_tracer_provider("executor", span_file=str(path))
    tracer = p.get_tracer("t")
    link_trace, link_span = new_span_context_ids()
    with (
        tracer.start_as_current_span("outer", kind=SpanKind.CONSUMER, attributes={"a": 1, "l": ["x", "y"]}),
        tracer.start_as_current_span(
            "inner", links=[Link(SpanContext(link_trace, link_span, is_remote=True))]
        ) as inner,
    ):
        inner.add_event("tick", {"n": 2})
    p.shutdown()
    spans = list(read_span_file(path))
    assert [s["name"] for s in spans] == ["inner", "outer"]  # written as each one ends
    inner_rec, outer_rec = spans
    assert inner_rec["trace_id"] == outer_rec["trace_id"] and len(inner_rec["trace_id"]) == 32
    assert inner_rec["parent_span_id"] == outer_rec["span_id"] and outer_rec["parent_span_id"] is None
    assert outer_rec["kind"] == "CONSUMER" and inner_rec["kind"] == "INTERNAL"
    assert outer_rec["attributes"] == {"a": 1, "l": ["x", "y"]}
    assert inner_rec["events"][0]["name"] == "tick" and inner_rec["events"][0]["attributes"] == {"n": 2}
    assert inner_rec["links"] == [
        {"trace_id": f"{link_trace:032x}", "span_id": f"{link_span:016x}", "attributes": {}}
    ]
    assert outer_rec["service"] == "legato-executor"
    assert 0 < outer_rec["start_ns"] <= inner_rec["start_ns"] <= inner_rec["end_ns"] <= outer_rec["end_ns"]


def test_span_file_lines_from_several_processes_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    script = (
        "import sys\n"
        "from legato.telemetry.tracing import build_tracer_provider\n"
        "p = build_tracer_provider(sys.argv[1], span_file=sys.argv[2])\n"
        "t = p.get_tracer('x')\n"
        "for i in range(300):\n"
        "    with t.start_as_current_span('s' * 500, attributes={'i': i, 'pad': 'p' * 3000}):\n"
        "        pass\n"
        "p.shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    procs = [
        subprocess.Popen([sys.executable, "-c", script, f"svc{n}", str(path)], env=env) for n in range(4)
    ]
    for proc in procs:
        assert proc.wait(60) == 0
    lines = path.read_text().splitlines()
    assert len(lines) == 1200
    records = [json.loads(line) for line in lines]
    for n in range(4):
        assert sorted(r["attributes"]["i"] for r in records if r["service"] == f"legato-svc{n}") == list(
            range(300)
        )


def test_span_file_exporter_after_shutdown_reports_failure(tmp_path: Path) -> None:
    exporter = SpanFileExporter(tmp_path / "x.jsonl")
    exporter.shutdown()
    exporter.shutdown()
    assert exporter.export([]).name == "FAILURE"


def test_traceparent_helpers_round_trip() -> None:
    trace_id, span_id = new_span_context_ids()
    tp = traceparent_for(trace_id, span_id)
    assert tp == f"00-{trace_id:032x}-{span_id:016x}-01"
    assert parse_traceparent(tp) == (trace_id, span_id)
    assert parse_traceparent(tp.upper()) == (trace_id, span_id)
    for bad in (
        None,
        "",
        "garbage",
        "00-" + "0" * 32 + "-" + "1" * 16 + "-01",
        "ff-" + "1" * 32 + "-" + "1" * 16 + "-01",
    ):
        assert parse_traceparent(bad) is None
    # The headers a child span would be sent with, from a remote parent built from the stored ids:
    headers = inject_headers({}, remote_parent(trace_id, span_id))
    assert parse_traceparent(headers["traceparent"]) == (trace_id, span_id)
    assert extract_context(headers) is not None


def test_forced_ids_give_the_next_span_exactly_those_ids_once(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    _, memory = provider
    trace_id, span_id = new_span_context_ids()
    tracer = get_tracer()
    with forced_ids(trace_id=trace_id, span_id=span_id):
        root = tracer.start_span("workflow.run", start_time=1_000)
        other = tracer.start_span("not forced")
    after = tracer.start_span("after")
    for s in (other, after):
        s.end()
    root.end(end_time=5_000)
    spans = {s.name: s for s in memory.get_finished_spans()}
    got = spans["workflow.run"].get_span_context()
    assert (got.trace_id, got.span_id) == (trace_id, span_id)
    assert spans["workflow.run"].start_time == 1_000 and spans["workflow.run"].end_time == 5_000
    assert spans["not forced"].get_span_context().span_id != span_id
    assert spans["not forced"].get_span_context().trace_id != trace_id
    assert spans["after"].get_span_context().span_id != span_id
    with pytest.raises(ValueError), forced_ids(span_id=0):
        pass
    with pytest.raises(ValueError), forced_ids(trace_id=2**128):
        pass


def test_children_recorded_first_hang_under_a_root_emitted_later(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """The scheduler's pattern: reserve the root's ids at run creation, record children (in any process)
    against the stored traceparent, emit the root at run end."""
    _, memory = provider
    run_trace, run_span = new_span_context_ids()
    stored = traceparent_for(run_trace, run_span)
    attempt_span = new_span_context_ids()[1]
    # An executor elsewhere: its span is a child of the attempt span named in the WorkItem's header.
    work_headers = {"traceparent": traceparent_for(run_trace, attempt_span)}
    with get_tracer().start_as_current_span("execute shell", context=extract_context(work_headers)):
        pass
    emit_span(
        "step.attempt",
        span_id=attempt_span,
        parent=stored,
        start_time_ns=2_000,
        end_time_ns=3_000,
        attributes={"legato.step_id": "a", "legato.attempt": 1},
        error="failed",
    )
    emit_span(
        "workflow.run",
        trace_id=run_trace,
        span_id=run_span,
        start_time_ns=1_000,
        end_time_ns=4_000,
        events=[("run.waiting", 1_500, {"reason": "queued"})],
        links=[Link(SpanContext(*new_span_context_ids(), is_remote=True))],
    )
    spans = {s.name: s for s in memory.get_finished_spans()}
    root, attempt, execute = spans["workflow.run"], spans["step.attempt"], spans["execute shell"]
    assert root.parent is None
    assert {s.get_span_context().trace_id for s in (root, attempt, execute)} == {run_trace}
    assert root.get_span_context().span_id == run_span
    assert attempt.parent is not None and attempt.parent.span_id == run_span
    assert execute.parent is not None and execute.parent.span_id == attempt_span
    assert attempt.status.status_code.name == "ERROR" and attempt.status.description == "failed"
    assert root.events[0].name == "run.waiting" and root.events[0].timestamp == 1_500
    assert len(root.links) == 1


def test_an_api_started_run_continues_the_request_trace(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    _, memory = provider
    with get_tracer().start_as_current_span("api instance.start") as api:
        headers = inject_headers({})
    api_ctx = api.get_span_context()
    run_span = new_span_context_ids()[1]
    unrelated_trace = new_span_context_ids()[0]
    emit_span(
        "workflow.run",
        trace_id=unrelated_trace,  # ignored: a span with a parent joins the parent's trace
        span_id=run_span,
        parent=extract_context(headers),
        start_time_ns=10,
        end_time_ns=20,
    )
    root = next(s for s in memory.get_finished_spans() if s.name == "workflow.run")
    assert root.get_span_context().trace_id == api_ctx.trace_id
    assert root.parent is not None and root.parent.span_id == api_ctx.span_id
    assert root.get_span_context().span_id == run_span


def test_spans_do_not_record_until_a_processor_listens_but_ids_and_context_still_flow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_TRACES_SAMPLER",
    ):
        monkeypatch.delenv(var, raising=False)
    p = build_tracer_provider("quiet")
    try:
        tracer = p.get_tracer("t")
        with tracer.start_as_current_span("unheard") as span:
            assert not span.is_recording()
            ctx = span.get_span_context()
            assert ctx.is_valid and not ctx.trace_flags.sampled
            carried = tracing.traceparent_of()
            assert carried is not None and f"{ctx.trace_id:032x}" in carried
        memory = InMemorySpanExporter()
        p.add_span_processor(SimpleSpanProcessor(memory))
        # A remote parent that was not sampled (an upstream service exporting nothing) is still recorded
        # here, in the trace it carried.
        parent = remote_parent(ctx.trace_id, ctx.span_id, sampled=False)
        with tracer.start_as_current_span("heard", context=parent) as span:
            assert span.is_recording()
        [finished] = memory.get_finished_spans()
        assert finished.name == "heard" and finished.context.trace_id == ctx.trace_id
        assert finished.parent is not None and finished.parent.span_id == ctx.span_id
    finally:
        p.shutdown()


def test_the_sampling_decision_travels_in_stored_traceparents() -> None:
    from legato.telemetry.ids import remote_parent_of, traceparent_sampled

    on = traceparent_for(7, 9)
    off = traceparent_for(7, 9, sampled=False)
    assert traceparent_sampled(on) and not traceparent_sampled(off)
    assert traceparent_sampled(None) and traceparent_sampled("garbage")
    for tp, sampled in ((on, True), (off, False)):
        ctx = remote_parent_of(tp)
        assert ctx is not None
        span_ctx = trace.get_current_span(ctx).get_span_context()
        assert (span_ctx.trace_id, span_ctx.span_id, span_ctx.trace_flags.sampled) == (7, 9, sampled)
    assert remote_parent_of("00-" + "0" * 32 + "-" + "1" * 16 + "-01") is None


@pytest.mark.parametrize(
    ("name", "arg", "description"),
    [
        ("always_on", "", "AlwaysOnSampler"),
        ("ALWAYS_OFF", "", "AlwaysOffSampler"),
        ("parentbased_always_off", "", "ParentBased{root:AlwaysOffSampler,"),
        ("traceidratio", "0.25", "TraceIdRatioBased{0.25}"),
        ("parentbased_traceidratio", "0.1", "ParentBased{root:TraceIdRatioBased{0.1},"),
        ("traceidratio", "lots", "TraceIdRatioBased{1.0}"),  # not a rate: 1.0, as the SDK does
        ("traceidratio", "2", "TraceIdRatioBased{1.0}"),
        ("sometimes", "", "ParentBased{root:AlwaysOnSampler,"),  # unknown: the SDK's default
    ],
)
def test_samplers_are_named_as_the_otel_variables_name_them(name: str, arg: str, description: str) -> None:
    assert sampler_named(name, arg).get_description().startswith(description)


@pytest.mark.parametrize(
    "traceparent",
    [
        "00-9c26ffe408daf6a7f49ca969746c4f61-8aa885b1bf98fa42-00",
        "00-9c26ffe408daf6a7f49ca969746c4f61-8aa885b1bf98fa42-01",
        "00-00000000000000000000000000000000-8aa885b1bf98fa42-01",  # invalid: zero trace id
        "00-9c26ffe408daf6a7f49ca969746c4f61-0000000000000000-01",  # invalid: zero span id
        "ff-9c26ffe408daf6a7f49ca969746c4f61-8aa885b1bf98fa42-01",  # invalid version
        "00-9c26ffe408daf6a7f49ca969746c4f61-8aa885b1bf98fa42-01-extra",  # version 00 has no more
        "not a traceparent",
        None,
    ],
)
def test_a_consumed_message_gets_the_span_the_sdk_would_make_when_nobody_records(
    monkeypatch: pytest.MonkeyPatch, traceparent: str | None
) -> None:
    """Without a processor ``consume_span`` builds the non-recording span itself (no SDK span machinery):
    the same trace as the SDK would continue, a fresh span id, not sampled, and the context restored."""
    for var in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_SAMPLER"):
        monkeypatch.delenv(var, raising=False)
    headers = {"traceparent": traceparent} if traceparent is not None else {}
    p = build_tracer_provider("quiet")
    monkeypatch.setattr(tracing, "_provider", p)
    try:
        assert not tracing.recording()
        with p.get_tracer("t").start_as_current_span("sdk", context=extract_context(headers)) as sdk_span:
            expected = sdk_span.get_span_context()
        before = trace.get_current_span()
        with tracing.consume_span("fast", headers) as span:
            got = span.get_span_context()
            assert trace.get_current_span() is span and not span.is_recording()
            carried = tracing.traceparent_of()
        assert trace.get_current_span() is before
        assert got.is_valid and not got.trace_flags.sampled and not got.is_remote
        continued = expected.trace_id if extract_context(headers) != {} else None
        if continued is not None:
            assert got.trace_id == continued
        else:
            assert got.trace_id != expected.trace_id  # a new trace each time, as the SDK starts one
        assert got.span_id != expected.span_id
        assert carried == traceparent_for(got.trace_id, got.span_id, sampled=False)
        # Once someone listens, the SDK path records the span as before.
        memory = InMemorySpanExporter()
        p.add_span_processor(SimpleSpanProcessor(memory))
        assert tracing.recording()
        with tracing.consume_span("heard", headers) as span:
            assert span.is_recording()
        assert [s.name for s in memory.get_finished_spans()] == ["heard"]
    finally:
        p.shutdown()


def test_emit_span_builds_nothing_when_nobody_records(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    p = build_tracer_provider("quiet")
    monkeypatch.setattr(tracing, "_provider", p)
    started: list[str] = []
    monkeypatch.setattr(tracing, "start_span_with_ids", lambda name, **_: started.append(name))
    try:
        emit_span("late", span_id=7, trace_id=9, start_time_ns=1, end_time_ns=2)
        assert started == []
    finally:
        p.shutdown()


@pytest.mark.parametrize(
    "headers",
    [
        {"traceparent": "00-9c26ffe408daf6a7f49ca969746c4f61-8aa885b1bf98fa42-01"},
        {"traceparent": "00-9c26ffe408daf6a7f49ca969746c4f61-8aa885b1bf98fa42-00"},
        {"traceparent": "01-9c26ffe408daf6a7f49ca969746c4f61-8aa885b1bf98fa42-01-later"},
        {"traceparent": "00-9c26ffe408daf6a7f49ca969746c4f61-8aa885b1bf98fa42-01", "tracestate": "a=1,b=2"},
        {"traceparent": "00-00000000000000000000000000000000-8aa885b1bf98fa42-01"},
        {"traceparent": "00-9c26ffe408daf6a7f49ca969746c4f61-8aa885b1bf98fa42-01-extra"},
        {"traceparent": "ff-9c26ffe408daf6a7f49ca969746c4f61-8aa885b1bf98fa42-01"},
        {"traceparent": "00-9C26FFE408DAF6A7F49CA969746C4F61-8aa885b1bf98fa42-01"},
        {"traceparent": "x" * 600},
        {},
    ],
)
def test_the_quick_trace_parent_reader_agrees_with_the_propagator(headers: dict[str, str]) -> None:
    expected = trace.get_current_span(extract_context(headers)).get_span_context()
    got = tracing.remote_span_context(headers)
    if not expected.is_valid:
        assert got is None
    else:
        assert got == expected
        assert (got.trace_flags, got.trace_state, got.is_remote) == (
            expected.trace_flags,
            expected.trace_state,
            expected.is_remote,
        )
