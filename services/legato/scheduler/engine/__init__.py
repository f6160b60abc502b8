"""What happens to runs and steps when messages arrive: the per-workflow rules, applied in memory.

The engine mutates the actor's ``WorkflowState`` and records every change in the batch's
``UnitOfWork``; nothing here does I/O. Run strategies decide which queued runs start
(``strategies.py``); the engine walks each running run's step graph. ``RunEngine`` is composed of one
part per responsibility, each in its own module beside this one:

- ``runs.py``: a run's life (created, queued, started, finished);
- ``graph.py``: walking the step graph (ready, skipped, failed before an attempt);
- ``dispatch.py``: sending attempts (the per-queue dispatch window, concurrency permits);
- ``results.py``: attempt starts and results, retries with backoff, timeouts, ``on_failure``;
- ``cancellation.py``: cancelling attempts and stops awaiting their executors' confirmation;
- ``children.py``: child steps (foreach, loop, subworkflow) whose runtimes return decisions;
- ``signals.py``: signal waits and published signals;
- ``base.py``: the shared state and small effects (timers, timeline notes, progress), and the
  signatures by which the parts call each other.

The parts import only ``base.py`` (never each other, never this module), so the package has no cycle.
"""

from __future__ import annotations

from legato.scheduler.engine.base import DISPATCH_LIMITS, STEP_TIMEOUT_GRACE, DispatchLimits, EngineBase
from legato.scheduler.engine.cancellation import Cancellation
from legato.scheduler.engine.children import ChildSteps
from legato.scheduler.engine.dispatch import StepDispatch
from legato.scheduler.engine.graph import StepGraph
from legato.scheduler.engine.results import StepResults
from legato.scheduler.engine.runs import RunLifecycle
from legato.scheduler.engine.signals import SignalWaits

__all__ = ["DISPATCH_LIMITS", "STEP_TIMEOUT_GRACE", "DispatchLimits", "RunEngine"]


class RunEngine(
    RunLifecycle,
    StepGraph,
    StepDispatch,
    StepResults,
    Cancellation,
    ChildSteps,
    SignalWaits,
    EngineBase,
):
    """Applies messages to one workflow's state within one batch (the parts above, put together)."""
