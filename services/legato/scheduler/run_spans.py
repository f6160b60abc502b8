"""One trace per run, across services and scheduler restarts.

When a run is created its root span id is reserved and stored (``workflow_instance.traceparent``); an
API start continues the API request's trace (the root span's parent), a signal-started run opens a new
trace that links to the signal's span, a child run (subworkflow, foreach or loop iteration) continues
its parent's trace under the parent's root. Each attempt's span id is reserved at dispatch and travels
in the work item's ``traceparent`` header, so the executor's span is its child. Spans are emitted with
their reserved ids when they end — by whichever scheduler replica applies the end — and only after the
batch that recorded it committed.

The engine records what happened (``span_facts.py``) in the batch's unit of work through the
builders here, which read the run's state and do no telemetry; ``emit`` turns the records into spans
and metrics once the batch committed, from the actor.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, assert_never

from opentelemetry import trace as otel_trace
from opentelemetry.trace import Link, SpanContext, SpanKind

from legato.core.reasons import Reason, code_of, message_of
from legato.scheduler.span_facts import (
    AttemptEnded,
    Decided,
    QueueWaited,
    RunEnded,
    RunRef,
    SpanFact,
    Waited,
)
from legato.telemetry.ids import (
    new_span_id,
    new_trace_id,
    parse_traceparent,
    remote_parent,
    traceparent_for,
    traceparent_sampled,
)
from legato.telemetry.metrics import metrics
from legato.telemetry.tracing import emit_span, recording, sample_new_trace

if TYPE_CHECKING:
    from legato.scheduler.state import AttemptState, InstanceState, StepState, UnitOfWork

MAX_ATTR = 256


def _ns(at: datetime | None) -> int:
    return int(at.timestamp() * 1e9) if at is not None else 0


def _span_id_of(traceparent: str | None) -> tuple[int, int] | None:
    return parse_traceparent(traceparent)


def open_run(inst: InstanceState, parent: SpanContext | None, *, link_only: bool) -> None:
    """Reserve the run's root span: continue ``parent``'s trace, or start one that links to it."""
    if parent is not None and parent.is_valid and not link_only:
        trace_id = parent.trace_id
        sampled = parent.trace_flags.sampled
        inst.trace_parent = traceparent_for(parent.trace_id, parent.span_id, sampled=sampled)
    else:
        trace_id = new_trace_id()
        sampled = sample_new_trace(trace_id, "workflow.run")
        links = (
            [traceparent_for(parent.trace_id, parent.span_id)]
            if parent is not None and parent.is_valid
            else []
        )
        # A signal-started run also links to the span of each signal that made its tuple.
        signals = inst.trigger.get("signals")
        for sig in signals if isinstance(signals, list) else []:
            if isinstance(sig, dict) and isinstance(sig.get("traceparent"), str):
                links.append(sig["traceparent"])
        inst.trace_links = links or None
    inst.traceparent = traceparent_for(trace_id, new_span_id(), sampled=sampled)


def open_child(child: InstanceState, parent: InstanceState) -> None:
    ids = _span_id_of(parent.traceparent)
    if ids is None:
        child.traceparent = traceparent_for(new_trace_id(), new_span_id())
        return
    child.trace_parent = parent.traceparent
    child.traceparent = traceparent_for(
        ids[0], new_span_id(), sampled=traceparent_sampled(parent.traceparent)
    )


def attempt_traceparent(inst: InstanceState, at: AttemptState) -> str | None:
    """The header for the work item: the (future) ``step.attempt`` span as parent of the executor's."""
    ids = _span_id_of(inst.traceparent)
    if ids is None:
        return None
    span_id = new_span_id()
    at.span_id = format(span_id, "016x")
    return traceparent_for(ids[0], span_id, sampled=traceparent_sampled(inst.traceparent))


def _ref(inst: InstanceState) -> RunRef | None:
    if inst.traceparent is None:
        return None
    return RunRef(inst.workflow_id, inst.id, inst.traceparent)


# ---------------------------------------------------------------------------------------- recording


def attempt_ended(
    uow: UnitOfWork, inst: InstanceState, st: StepState, at: AttemptState, step_type: str
) -> None:
    """The attempt ended (result applied, timed out or cancelled)."""
    ref = _ref(inst)
    if at.span_id is None or ref is None:
        return
    uow.spans.append(
        AttemptEnded(
            run=ref,
            span_id=at.span_id,
            step_id=st.step_id,
            step_type=step_type,
            attempt=at.attempt,
            attempt_id=at.id,
            status=at.status,
            queue=at.queue,
            executor=at.executor,
            dispatched_at=at.dispatched_at,
            started_at=at.started_at,
            ended_at=at.ended_at,
            error=at.error,
        )
    )


def point(uow: UnitOfWork, inst: InstanceState, name: str, at: datetime, **attrs: Any) -> None:
    """A short span on the run's trace for a decision (retry scheduled, timer fired, operator action…)."""
    ref = _ref(inst)
    if ref is not None:
        uow.spans.append(Decided(ref, name, at, attrs))


def waiting(uow: UnitOfWork, inst: InstanceState, at: datetime, reason: Reason, step_id: str | None) -> None:
    """Why something waits, as an event on the run's trace (dashboards answer "why is nothing running")."""
    ref = _ref(inst)
    if ref is None:
        return
    uow.spans.append(Waited(ref, at, code_of(reason), message_of(reason) or "", step_id))


def queue_wait(uow: UnitOfWork, inst: InstanceState, strategy: str) -> None:
    """The run started: how long it waited since it was created."""
    ref = _ref(inst)
    if ref is None or inst.started_at is None:
        return
    uow.spans.append(QueueWaited(ref, inst.created_at, inst.started_at, strategy))


def run_ended(uow: UnitOfWork, inst: InstanceState, strategy: str) -> None:
    """The run (or inline iteration) ended."""
    ref = _ref(inst)
    if ref is None or _span_id_of(ref.traceparent) is None:
        return
    uow.spans.append(
        RunEnded(
            run=ref,
            trace_parent=inst.trace_parent,
            trace_links=tuple(inst.trace_links or ()),
            created_at=inst.created_at,
            ended_at=inst.ended_at,
            version=inst.version,
            strategy=strategy,
            trigger_kind=inst.trigger.get("kind"),
            status=inst.status,
            run_number=inst.run_number,
            body_path=inst.body_path,
            parent_iteration=inst.parent_iteration,
            error=inst.error,
        )
    )


# ---------------------------------------------------------------------------------------- emitting


def emit(facts: Iterable[SpanFact]) -> None:
    """After the batch committed: each recorded fact becomes its span (and, for attempts, a metric)."""
    if not recording():  # no span is kept: only the attempts' duration metric is left to record
        for fact in facts:
            if isinstance(fact, AttemptEnded):
                _record_attempt_duration(fact)
        return
    for fact in facts:
        try:
            _emit_one(fact)
        except Exception:  # telemetry must never break scheduling
            pass


def _attrs(run: RunRef, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"legato.workflow_id": run.workflow_id, "legato.instance_id": run.instance_id}
    for k, v in extra.items():
        if v is not None:
            out[f"legato.{k}"] = v if isinstance(v, int | float | bool) else str(v)[:MAX_ATTR]
    return out


def _emit_one(fact: SpanFact) -> None:
    match fact:
        case AttemptEnded():
            _emit_attempt(fact)
        case Decided(run, name, at, attrs):
            t = _ns(at)
            emit_span(
                name=name,
                span_id=new_span_id(),
                parent=run.traceparent,
                start_time_ns=t,
                end_time_ns=t,
                attributes=_attrs(run, **attrs),
            )
        case Waited(run, at, reason, message, step_id):
            t = _ns(at)
            event = {"legato.reason": str(reason), "legato.message": message[:MAX_ATTR]}
            emit_span(
                name="run.waiting",
                span_id=new_span_id(),
                parent=run.traceparent,
                start_time_ns=t,
                end_time_ns=t,
                attributes=_attrs(run, step_id=step_id, reason=reason),
                events=[("waiting", t, event)],
            )
        case QueueWaited(run, created_at, started_at, strategy):
            emit_span(
                name="run.queue_wait",
                span_id=new_span_id(),
                parent=run.traceparent,
                start_time_ns=_ns(created_at),
                end_time_ns=_ns(started_at),
                attributes=_attrs(run, run_strategy=strategy),
            )
        case RunEnded():
            _emit_run(fact)
        case _:
            assert_never(fact)


def _emit_attempt(fact: AttemptEnded) -> None:
    outcome = fact.status
    emit_span(
        name="step.attempt",
        span_id=int(fact.span_id, 16),
        parent=fact.run.traceparent,
        start_time_ns=_ns(fact.dispatched_at),
        end_time_ns=_ns(fact.ended_at) or _ns(fact.dispatched_at),
        attributes=_attrs(
            fact.run,
            step_id=fact.step_id,
            attempt=fact.attempt,
            attempt_id=fact.attempt_id,
            outcome=outcome,
            step_type=fact.step_type,
            queue=fact.queue,
            executor=fact.executor,
        ),
        events=[("started", _ns(fact.started_at), {})] if fact.started_at else [],
        error=None if outcome == "succeeded" else (fact.error or outcome)[:MAX_ATTR],
    )
    _record_attempt_duration(fact)


def _record_attempt_duration(fact: AttemptEnded) -> None:
    if fact.started_at and fact.ended_at:
        metrics().step_duration.record(
            (fact.ended_at - fact.started_at).total_seconds(), step_type=fact.step_type, outcome=fact.status
        )


def _emit_run(fact: RunEnded) -> None:
    ids = _span_id_of(fact.run.traceparent)
    if ids is None:
        return
    trace_id, span_id = ids
    links: list[Link] = []
    for tp in fact.trace_links:
        parsed = parse_traceparent(tp)
        if parsed is not None:
            ctx = remote_parent(*parsed)
            links.append(Link(otel_trace.get_current_span(ctx).get_span_context()))
    failed = fact.status in ("failed", "timed_out")
    emit_span(
        name="workflow.run" if not fact.body_path else "workflow.iteration",
        span_id=span_id,
        trace_id=trace_id,
        parent=fact.trace_parent,
        start_time_ns=_ns(fact.created_at),
        end_time_ns=_ns(fact.ended_at),
        kind=SpanKind.INTERNAL,
        links=links,
        attributes=_attrs(
            fact.run,
            workflow_version=fact.version,
            run_strategy=fact.strategy,
            trigger_kind=fact.trigger_kind,
            status=fact.status,
            run_number=fact.run_number,
            body=fact.body_path,
            iteration=fact.parent_iteration,
        ),
        error=fact.error[:MAX_ATTR] if failed and fact.error else None,
    )
