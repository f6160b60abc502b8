"""Typed replies of the request/reply API (after ``nats.micro``'s ``ServiceInfo``/``EndpointStats``).

The trigger returns these Structs from its endpoints and encodes them inside ``{"result": …}``; the
client decodes the same Structs, so a caller reads ``reply.instance_id``, not ``reply["instance_id"]``.
The JSON is the one the API always sent: the field names are the wire names. Replies do not forbid
unknown fields, so a newer trigger may add one without breaking an older client.
"""

from __future__ import annotations

import msgspec

from legato.core.model import RunStrategyType
from legato.core.statuses import InstanceStatus


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every typed reply."""


class StartReply(Reply, frozen=True, kw_only=True):
    """``instance.start``: the run a start request names (new, or the one the same request made)."""

    instance_id: str
    """The run's id, derived from the workflow and the request id (the same request, the same run)."""
    workflow_id: str
    status: InstanceStatus
    """``pending`` for a new start (the scheduler creates the run); the run's status for a duplicate."""
    duplicate: bool
    """True when this request id had already started this run."""


class ActionAccepted(Reply, frozen=True, kw_only=True):
    """An operator action (stop, kill, restart, unblock, skip a step; on a run or a whole workflow),
    accepted and queued for the scheduler, which applies it and records the result on the run."""

    accepted: bool = True
    action_id: str
    """The action's id (the request id when one was given): sending it again is one action."""
    action: str
    """What the scheduler is asked to do: ``stop``, ``kill``, ``restart``, ``unblock``, ``skip_step``,
    ``stop_all``, ``kill_all``, ``unblock_all``."""
    workflow_id: str
    instance_id: str | None
    """The run acted on; None for an action on the whole workflow."""


class WorkflowValidated(Reply, frozen=True, kw_only=True):
    """``workflow.validate``: the definition parses and compiles (an invalid one is an error reply)."""

    workflow_id: str
    valid: bool


class WorkflowPushed(Reply, frozen=True, kw_only=True):
    """``workflow.push``: the version a definition is stored as."""

    workflow_id: str
    version: int
    """The version of this definition: a new one, or the existing version with the same digest."""
    created: bool
    """False when the definition was already stored (pushing it again changes nothing)."""
    active_version: int
    active: bool
    digest: str
    """Digest of the normalised definition."""


class WorkflowSummary(Reply, frozen=True, kw_only=True):
    """A workflow's row: activation, run strategy, queue counters (``workflow.activate``,
    ``workflow.deactivate``, ``workflow.set_run_strategy``; also the head of ``workflow.get``)."""

    workflow_id: str
    active: bool
    active_version: int
    latest_version: int
    run_strategy: RunStrategyType
    max_concurrency: int
    strategy_source: str
    """Where the strategy comes from: ``definition`` or ``api`` (set by an operator)."""
    paused: bool
    blocked_by: str | None
    """The failed run that blocks a strict_sequential workflow's queue."""
    blocked_since: str | None
    running: int
    """Runs running now (under the run strategy)."""
    queued: int
    """Runs queued now."""
    updated_at: str
    archived_at: str | None


class SignalSent(Reply, frozen=True, kw_only=True):
    """``signal.send``: the signal, stored by JetStream before the reply."""

    name: str
    id: str
    """The signal's id (its Nats-Msg-Id): the same id twice is one signal."""
    stream_seq: int
    duplicate: bool
    """True when a signal with this id was already stored."""
