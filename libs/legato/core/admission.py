"""The rules of a workflow's run queue, in one place for the scheduler (which enforces them) and the
trigger (which explains them): how many runs may run at once, whether the queue moves, and which
operator action applies to a run in which status, and in which order queued runs start.

Pure functions of the workflow row's columns and a run's trigger info; no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any


class QueueState(StrEnum):
    """Whether a workflow's queued runs may start."""

    QUEUED = "queued"
    """Queued runs start, by priority then oldest first, while fewer than the limit run."""
    PAUSED = "paused"
    """Nothing starts: the workflow is paused, or its limit is 0."""
    BLOCKED = "blocked"
    """strict_sequential after a failure: only the restarted blocker may run until it is unblocked."""


def concurrency_limit(run_strategy: str, max_concurrency: int) -> int:
    """How many runs may run at once under the strategy: ``max_concurrency`` for parallel, at most one
    for every other strategy. A pause is not counted here (see ``running_limit``)."""
    return max_concurrency if run_strategy == "parallel" else min(1, max_concurrency)


def running_limit(run_strategy: str, max_concurrency: int, paused: bool) -> int:
    """How many runs may run at once now: 0 while the workflow is paused."""
    return 0 if paused else concurrency_limit(run_strategy, max_concurrency)


def queue_state(run_strategy: str, max_concurrency: int, paused: bool, blocked_by: str | None) -> QueueState:
    """Whether queued runs may start. A pause, or a limit of 0 runs, wins over a block (even the blocker
    waits while paused): the queue is paused exactly when ``running_limit`` is 0."""
    if running_limit(run_strategy, max_concurrency, paused) == 0:
        return QueueState.PAUSED
    if run_strategy == "strict_sequential" and blocked_by:
        return QueueState.BLOCKED
    return QueueState.QUEUED


# Run statuses each operator action on one run applies to, in the order error messages list them (the
# API refuses the others with an error; the scheduler, which applies the action later, ignores it with
# a reason if the run moved on meanwhile).
ACTION_APPLIES_TO: Mapping[str, tuple[str, ...]] = {
    "stop": ("queued", "running"),
    "kill": ("queued", "running"),
    "restart": ("failed", "timed_out", "stopped"),
    "skip_step": ("running", "failed", "timed_out"),
}


# Further run statuses an action applies to only when the request names a step: a succeeded run can be
# restarted from a given step.
ACTION_APPLIES_TO_WITH_STEP: Mapping[str, tuple[str, ...]] = {"restart": ("succeeded",)}


def step_only_statuses(action: str) -> tuple[str, ...]:
    """The run statuses ``action`` applies to only when the request names a step (restart: succeeded)."""
    return ACTION_APPLIES_TO_WITH_STEP.get(action, ())


def action_statuses(action: str, *, step_given: bool = False) -> tuple[str, ...]:
    """The run statuses ``action`` applies to; a succeeded run can be restarted from a given step."""
    statuses = ACTION_APPLIES_TO[action]
    if step_given:
        return (*statuses, *step_only_statuses(action))
    return statuses


def action_applies(action: str, status: str, *, step_given: bool = False) -> bool:
    """True if ``action`` applies to a run in ``status``."""
    return status in action_statuses(action, step_given=step_given)


# ------------------------------------------------------------------ queue priority

BACKFILL_PRIORITIES: Mapping[str, int] = {"low": -1, "normal": 0, "high": 1}
"""A backfill's ``--priority`` as a queue priority; every run not started by a backfill is ``normal``."""
DEFAULT_BACKFILL_PRIORITY = "low"
"""By default a backfill's runs wait behind every live run, so a long backfill never starves the schedule."""


def queue_priority(trigger: Mapping[str, Any]) -> int:
    """The queue priority of a run from its stored trigger info: higher starts first.

    A workflow's queued runs start in the order (priority, then arrival; a restarted run goes first
    among its priority), always within the run strategy's limit: priority only chooses which of the
    queued runs takes a free slot, it never adds one. Live runs (api, cron, signal, child) are all
    ``normal``, so among them every strategy stays FIFO exactly as specified; only backfill runs carry
    another priority (their backfill's, ``low`` unless started with ``--priority``).
    """
    if trigger.get("kind") != "backfill":
        return 0
    return BACKFILL_PRIORITIES.get(str(trigger.get("priority", DEFAULT_BACKFILL_PRIORITY)), -1)


QUEUE_ORDER_SQL = (
    "CASE WHEN trigger->>'kind' = 'backfill' THEN CASE coalesce(trigger->>'priority', 'low') "
    "WHEN 'high' THEN 0 WHEN 'normal' THEN 1 ELSE 2 END ELSE 1 END, seq"
)
"""``ORDER BY`` of a workflow's queued ``workflow_instance`` rows in start order (``queue_priority``)."""
