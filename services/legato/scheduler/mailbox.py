"""What a workflow actor's mailbox holds (``actors.py``): the kinds of message it applies, each in the
envelope that carries the span it came with, and how a batch of them is walked (``in_slices``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from opentelemetry.trace import SpanContext

from legato.protocol.messages import (
    ActionRequest,
    AttemptFinished,
    AttemptStarted,
    ChildFinished,
    SignalWaitSatisfied,
    StartRun,
    WorkflowChanged,
)


@dataclass(frozen=True, slots=True)
class TimerFired:
    """A due durable timer of one of the workflow's runs, as ``repository.due_timers`` reads its row
    (``timers.py`` delivers it; the batch that applies it deletes the row, so it fires once)."""

    id: int
    workflow_id: str
    instance_id: str
    kind: str
    step_id: str | None
    attempt_id: str | None


Message = (
    StartRun
    | ActionRequest
    | WorkflowChanged
    | ChildFinished
    | AttemptStarted
    | AttemptFinished
    | SignalWaitSatisfied
    | TimerFired
)


# Messages whose handlers only compute (they run no statement of their own): a batch of these alone
# writes nothing but its flush, so it may run without a transaction block (``WorkflowActor._apply``).
COMPUTE_ONLY = (StartRun, AttemptFinished, AttemptStarted, SignalWaitSatisfied, ChildFinished)


@dataclass
class Envelope:
    """A message in the mailbox, with the span that delivered it (the consumer's), so the run's trace
    can continue from it."""

    message: Message
    parent: SpanContext | None = None


# A batch lets the event loop run after computing this many messages (``in_slices``).
YIELD_EVERY = 16

T = TypeVar("T")


async def in_slices(items: Sequence[T], every: int) -> AsyncGenerator[T, None]:
    """``items`` in order, letting the event loop run after each ``every`` of them: one workflow's large
    batch (a foreach's results, a burst of starts) computes for milliseconds without a statement, and
    meanwhile the other workflows' actors, the consumers and the outbox relay of this process would
    wait. Their turns between its slices hold it back by no more than what they do."""
    for i, item in enumerate(items):
        if i and not i % every:
            await asyncio.sleep(0)
        yield item
