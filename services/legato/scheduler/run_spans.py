"""One trace per run, across services and scheduler restarts.

When a run is created its root span id is reserved and stored (``workflow_instance.traceparent``); an
API start continues the API request's trace (the root span's parent), a signal-started run opens a new
trace that links to the signal's span, a child run (subworkflow, foreach or loop iteration) continues
its parent's trace under the parent's root. Each attempt's span id is reserved at dispatch and travels
in the work item's ``traceparent`` header, so the executor's span is its child. Spans are emitted with
their reserved ids when they end — by whichever scheduler replica applies the end — and only after the
batch that recorded it committed.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import Link, SpanContext, SpanKind

from legato.telemetry.ids import (
    new_span_id,
    new_trace_id,
    parse_traceparent,
    remote_parent,
    traceparent_for,
    traceparent_sampled,
)
from legato.telemetry.metrics import metrics
from legato.telemetry.tracing import emit_span, sample_new_trace

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


def _attrs(inst: InstanceState, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"legato.workflow_id": inst.workflow_id, "legato.instance_id": inst.id}
    for k, v in extra.items():
        if v is not None:
            out[f"legato.{k}"] = v if isinstance(v, int | float | bool) else str(v)[:MAX_ATTR]
    return out


def _later(uow: UnitOfWork, **kwargs: Any) -> None:
    uow.spans.append(functools.partial(_emit_safely, **kwargs))


def _emit_safely(**kwargs: Any) -> None:
    try:
        emit_span(**kwargs)
    except Exception:  # telemetry must never break scheduling
        pass


def attempt_ended(
    uow: UnitOfWork, inst: InstanceState, st: StepState, at: AttemptState, step_type: str
) -> None:
    if at.span_id is None or inst.traceparent is None:
        return
    outcome = at.status
    _later(
        uow,
        name="step.attempt",
        span_id=int(at.span_id, 16),
        parent=inst.traceparent,
        start_time_ns=_ns(at.dispatched_at),
        end_time_ns=_ns(at.ended_at) or _ns(at.dispatched_at),
        attributes=_attrs(
            inst,
            step_id=st.step_id,
            attempt=at.attempt,
            attempt_id=at.id,
            outcome=outcome,
            step_type=step_type,
            queue=at.queue,
            executor=at.executor,
        ),
        events=[("started", _ns(at.started_at), {})] if at.started_at else [],
        error=None if outcome == "succeeded" else (at.error or outcome)[:MAX_ATTR],
    )
    if at.started_at and at.ended_at:
        metrics().step_duration.record(
            (at.ended_at - at.started_at).total_seconds(), step_type=step_type, outcome=outcome
        )


def point(uow: UnitOfWork, inst: InstanceState, name: str, at: datetime, **attrs: Any) -> None:
    """A short span on the run's trace for a decision (retry scheduled, timer fired, operator action…)."""
    if inst.traceparent is None:
        return
    t = _ns(at)
    _later(
        uow,
        name=name,
        span_id=new_span_id(),
        parent=inst.traceparent,
        start_time_ns=t,
        end_time_ns=t,
        attributes=_attrs(inst, **attrs),
    )


def waiting(
    uow: UnitOfWork, inst: InstanceState, at: datetime, reason: dict[str, Any], step_id: str | None
) -> None:
    """Why something waits, as an event on the run's trace (dashboards answer "why is nothing running")."""
    if inst.traceparent is None:
        return
    t = _ns(at)
    event = {
        "legato.reason": str(reason.get("code")),
        "legato.message": str(reason.get("message", ""))[:MAX_ATTR],
    }
    _later(
        uow,
        name="run.waiting",
        span_id=new_span_id(),
        parent=inst.traceparent,
        start_time_ns=t,
        end_time_ns=t,
        attributes=_attrs(inst, step_id=step_id, reason=reason.get("code")),
        events=[("waiting", t, event)],
    )


def queue_wait(uow: UnitOfWork, inst: InstanceState, strategy: str) -> None:
    if inst.traceparent is None or inst.started_at is None:
        return
    _later(
        uow,
        name="run.queue_wait",
        span_id=new_span_id(),
        parent=inst.traceparent,
        start_time_ns=_ns(inst.created_at),
        end_time_ns=_ns(inst.started_at),
        attributes=_attrs(inst, run_strategy=strategy),
    )


def run_ended(uow: UnitOfWork, inst: InstanceState, strategy: str) -> None:
    ids = _span_id_of(inst.traceparent)
    if ids is None:
        return
    trace_id, span_id = ids
    links: list[Link] = []
    for tp in inst.trace_links or []:
        parsed = parse_traceparent(tp)
        if parsed is not None:
            ctx = remote_parent(*parsed)
            from opentelemetry import trace as _trace

            links.append(Link(_trace.get_current_span(ctx).get_span_context()))
    name = "workflow.run" if not inst.body_path else "workflow.iteration"
    _later(
        uow,
        name=name,
        span_id=span_id,
        trace_id=trace_id,
        parent=inst.trace_parent,
        start_time_ns=_ns(inst.created_at),
        end_time_ns=_ns(inst.ended_at),
        kind=SpanKind.INTERNAL,
        links=links,
        attributes=_attrs(
            inst,
            workflow_version=inst.version,
            run_strategy=strategy,
            trigger_kind=inst.trigger.get("kind"),
            status=inst.status,
            run_number=inst.run_number,
            body=inst.body_path,
            iteration=inst.parent_iteration,
        ),
        error=inst.error[:MAX_ATTR] if inst.status in ("failed", "timed_out") and inst.error else None,
    )
