"""Trace and span ids chosen ahead of time, and spans started with them.

A run's root span ``workflow.run`` is only emitted when the run ends, yet every span recorded while it
runs (in any process, before or after a restart) must name it as parent. So its ids are reserved when
the run is created (``new_span_context_ids()``), stored as a ``traceparent`` (``traceparent_for``), and
the span is finally started with exactly those ids::

    with forced_ids(trace_id=t, span_id=s):
        span = tracer.start_span("workflow.run", context=parent, start_time=created_ns)
    span.end(end_time=ended_ns)

``ForcedIdGenerator`` (installed by ``configure_tracing``) hands out an override once, to the first span
started inside the ``with``; every other span gets random ids. ``emit_span`` wraps the whole dance.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@dataclass
class _Override:
    trace_id: int | None
    span_id: int | None


_override: ContextVar[_Override | None] = ContextVar("legato_forced_ids", default=None)


class ForcedIdGenerator(RandomIdGenerator):
    """Random ids, except inside ``forced_ids(...)``: the next span started there gets the given ids.

    Each override is used once, so spans a started span opens meanwhile never share its span id.
    """

    def generate_span_id(self) -> int:
        forced = _override.get()
        if forced is not None and forced.span_id is not None:
            span_id, forced.span_id = forced.span_id, None
            return span_id
        return super().generate_span_id()

    def generate_trace_id(self) -> int:
        # Only asked for root spans (a span with a valid parent inherits the parent's trace id).
        forced = _override.get()
        if forced is not None and forced.trace_id is not None:
            trace_id, forced.trace_id = forced.trace_id, None
            return trace_id
        return super().generate_trace_id()


@contextmanager
def forced_ids(*, trace_id: int | None = None, span_id: int | None = None) -> Iterator[None]:
    """Within the block, the next span started gets ``span_id`` (and ``trace_id`` if it is a root)."""
    if trace_id is not None and not 0 < trace_id < 2**128:
        raise ValueError(f"trace_id: must be a non-zero 128-bit integer, got {trace_id!r}")
    if span_id is not None and not 0 < span_id < 2**64:
        raise ValueError(f"span_id: must be a non-zero 64-bit integer, got {span_id!r}")
    token = _override.set(_Override(trace_id, span_id))
    try:
        yield
    finally:
        _override.reset(token)


def new_trace_id() -> int:
    """A random, non-zero 128-bit trace id."""
    return random.getrandbits(128) or 1


def new_span_id() -> int:
    """A random, non-zero 64-bit span id."""
    return random.getrandbits(64) or 1


def new_span_context_ids() -> tuple[int, int]:
    """A fresh ``(trace_id, span_id)`` pair to reserve for a span emitted later."""
    return new_trace_id(), new_span_id()


def traceparent_for(trace_id: int, span_id: int, *, sampled: bool = True) -> str:
    """The W3C ``traceparent`` naming ``span_id`` in ``trace_id`` (to store, or to put in headers)."""
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def parse_traceparent(value: str | None) -> tuple[int, int] | None:
    """``(trace_id, span_id)`` of a W3C ``traceparent``; None when absent or malformed."""
    if not value:
        return None
    m = _TRACEPARENT.match(value.strip().lower())
    if m is None or m.group(1) == "ff":
        return None
    trace_id, span_id = int(m.group(2), 16), int(m.group(3), 16)
    if trace_id == 0 or span_id == 0:
        return None
    return trace_id, span_id


def traceparent_sampled(value: str | None) -> bool:
    """The ``sampled`` flag of a W3C ``traceparent`` (True when absent or malformed)."""
    m = _TRACEPARENT.match(value.strip().lower()) if value else None
    return m is None or bool(int(m.group(4), 16) & 1)


def remote_parent_of(value: str | None) -> Context | None:
    """The context of a stored/carried ``traceparent``, keeping its sampling decision; None if invalid."""
    ids = parse_traceparent(value)
    return remote_parent(*ids, sampled=traceparent_sampled(value)) if ids is not None else None


def remote_parent(trace_id: int, span_id: int, *, sampled: bool = True) -> Context:
    """A context whose current span is the (remote) span ``span_id``: pass as ``context=`` to start a child."""
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    span_ctx = SpanContext(trace_id=trace_id, span_id=span_id, is_remote=True, trace_flags=flags)
    return trace.set_span_in_context(NonRecordingSpan(span_ctx), Context())
