"""What a workflow actor's mailbox holds (``actors.py``): the kinds of message it applies, each in the
envelope that carries the span it came with, and how a batch of them gives way (``give_way``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

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


# A batch lets the event loop run after computing this many messages (``give_way``).
YIELD_EVERY = 16


async def give_way(done: int, every: int = YIELD_EVERY) -> None:
    """Called before each message of a batch with how many it has computed: after each ``every`` of
    them, one turn of the event loop. One workflow's large batch (a foreach's results, a burst of
    starts) computes for milliseconds without a statement, and meanwhile the other workflows' actors,
    the consumers and the outbox relay of this process would wait. Their turns between its slices hold
    it back by no more than what they do."""
    if done and not done % every:
        await asyncio.sleep(0)
