"""The statuses of runs, steps and attempts, and the sets of them every service and the CLI agree on.

One home for these names (after arq's ``JobStatus``): the scheduler writes them, the trigger filters
and checks operator actions by them, the client waits for a terminal one, the CLI colours them. Each is
a ``StrEnum``, so a member *is* its string: it compares equal to the text stored in Postgres and sent
on the wire, and a plain ``"running"`` read from either is found in these sets.
"""

from __future__ import annotations

from enum import StrEnum


class InstanceStatus(StrEnum):
    """Where a run (``workflow_instance.status``) is."""

    PENDING = "pending"
    """Accepted by the API, not yet created by the scheduler (only in API replies, never stored)."""
    CREATED = "created"
    """Made by the scheduler and queued within the same transaction (never committed as such)."""
    QUEUED = "queued"
    """Waiting for its workflow's run strategy, a pause or a block to let it start."""
    RUNNING = "running"
    """Started: its steps are being walked."""
    SUCCEEDED = "succeeded"
    """Ended: every step done."""
    FAILED = "failed"
    """Ended: a step failed and the run's failure policy stopped it."""
    TIMED_OUT = "timed_out"
    """Ended: the run or a step ran out of time."""
    STOPPED = "stopped"
    """Ended: an operator stopped or killed it, or its strategy replaced it."""
    SKIPPED = "skipped"
    """Ended without running: its strategy or a pause skipped it."""


class StepStatus(StrEnum):
    """Where one step of a run (``step_run.status``) is."""

    PENDING = "pending"
    """To run again: a restart reset it (the scheduler re-decides it)."""
    WAITING = "waiting"
    """Its predecessors, a signal, a permit or a dispatch slot have not let it go yet."""
    QUEUED = "queued"
    """Sent to an executor's queue, no attempt has started."""
    RUNNING = "running"
    """An attempt is running (or its children are, for foreach, loop and subworkflow)."""
    RETRYING = "retrying"
    """An attempt failed and the next one waits out its backoff."""
    SUCCEEDED = "succeeded"
    """Ended: its outputs are recorded."""
    FAILED = "failed"
    """Ended: its last attempt failed."""
    TIMED_OUT = "timed_out"
    """Ended: its last attempt ran out of time."""
    STOPPED = "stopped"
    """Ended: the run was stopped or killed while it ran."""
    SKIPPED = "skipped"
    """Ended without running: a branch not taken, or an operator said go on without it."""


class AttemptStatus(StrEnum):
    """Where one attempt of a step (``step_attempt.status``) is."""

    DISPATCHED = "dispatched"
    """Published to the executors' work stream; no executor has started it yet."""
    RUNNING = "running"
    """An executor started it and sends heartbeats."""
    SUCCEEDED = "succeeded"
    """Ended: the step's body succeeded."""
    FAILED = "failed"
    """Ended: the step's body failed."""
    TIMED_OUT = "timed_out"
    """Ended: the step's timeout cut it."""
    CANCELLED = "cancelled"
    """Ended: the run was stopped or killed, or the attempt was replaced."""
    LOST = "lost"
    """Ended: its executor vanished or failed for a platform reason (retried as a platform failure)."""


ACTIVE_INSTANCE: tuple[InstanceStatus, ...] = (InstanceStatus.QUEUED, InstanceStatus.RUNNING)
"""A run that is not over: it counts against its workflow and blocks its removal."""

TERMINAL_INSTANCE: tuple[InstanceStatus, ...] = (
    InstanceStatus.SUCCEEDED,
    InstanceStatus.FAILED,
    InstanceStatus.TIMED_OUT,
    InstanceStatus.STOPPED,
    InstanceStatus.SKIPPED,
)
"""A run that is over (until an operator restarts it)."""

FAILED_INSTANCE: tuple[InstanceStatus, ...] = (
    InstanceStatus.FAILED,
    InstanceStatus.TIMED_OUT,
    InstanceStatus.STOPPED,
)
"""A run that ended without succeeding and can be restarted as it is."""

TERMINAL_STEP: tuple[StepStatus, ...] = (
    StepStatus.SUCCEEDED,
    StepStatus.FAILED,
    StepStatus.TIMED_OUT,
    StepStatus.STOPPED,
    StepStatus.SKIPPED,
)
"""A step that is decided for this run number."""

FAILED_STEP: tuple[StepStatus, ...] = (StepStatus.FAILED, StepStatus.TIMED_OUT, StepStatus.STOPPED)
"""A step that ended without succeeding (it fails the run unless its failure is ignored)."""

LIVE_ATTEMPT: tuple[AttemptStatus, ...] = (AttemptStatus.DISPATCHED, AttemptStatus.RUNNING)
"""An attempt an executor may still be working on."""
