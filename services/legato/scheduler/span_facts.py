"""What a run's trace shows, as the unit of work records it: facts, turned into spans after commit.

The engine appends these records to ``UnitOfWork.spans`` (through the builders in ``run_spans.py``);
once the batch committed, ``run_spans.emit`` makes each one a span. A batch that aborts leaves no
trace of what did not happen. Each record holds the values of the moment it was recorded: a run can
end, restart and end again in one batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class RunRef:
    """The run a span belongs to: its ids and its reserved root span (``traceparent``)."""

    workflow_id: str
    instance_id: str
    traceparent: str


@dataclass(frozen=True, slots=True)
class RunEnded:
    """A run (or an inline iteration, with ``body_path``) ended: its ``workflow.run`` span."""

    run: RunRef
    trace_parent: str | None
    trace_links: tuple[str, ...]
    created_at: datetime
    ended_at: datetime | None
    version: int
    strategy: str
    trigger_kind: Any
    status: str
    run_number: int
    body_path: str | None
    parent_iteration: int | None
    error: str | None


@dataclass(frozen=True, slots=True)
class AttemptEnded:
    """An attempt's result was applied (or it timed out, or was cancelled): its ``step.attempt`` span."""

    run: RunRef
    span_id: str
    step_id: str
    step_type: str
    attempt: int
    attempt_id: str
    status: str
    queue: str
    executor: str | None
    dispatched_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    error: str | None


@dataclass(frozen=True, slots=True)
class Waited:
    """A run or a step began to wait, and why (``reason``)."""

    run: RunRef
    at: datetime
    reason: str | None  # its code
    message: str
    step_id: str | None


@dataclass(frozen=True, slots=True)
class QueueWaited:
    """A run started after waiting in its workflow's queue since it was created."""

    run: RunRef
    created_at: datetime
    started_at: datetime
    strategy: str


@dataclass(frozen=True, slots=True)
class Decided:
    """A decision worth a point on the trace (retry scheduled, timer fired, operator action)."""

    run: RunRef
    name: str
    at: datetime
    attrs: dict[str, Any]


SpanFact = RunEnded | AttemptEnded | Waited | QueueWaited | Decided
