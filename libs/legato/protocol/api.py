"""Request/reply API on core NATS: ``legato.api.<resource>.<verb>``, JSON in, JSON out.

Every reply is either ``{"result": {...}}`` or ``{"error": {"code", "message", "details"}}`` — never a
timeout for a bad request. Requests reject unknown fields so a typo is an error, not a silent default.
"""

from __future__ import annotations

from typing import Any

import msgspec


class ApiRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    actor: str | None = None  # who asks (recorded on operator actions)


class PushWorkflow(ApiRequest, frozen=True, kw_only=True, forbid_unknown_fields=True):
    definition: str  # YAML or JSON text
    source: str | None = None  # file name, for error messages
    activate: bool = True


class WorkflowRef(ApiRequest, frozen=True, kw_only=True, forbid_unknown_fields=True):
    workflow_id: str
    version: int | None = None


class ListWorkflows(ApiRequest, frozen=True, kw_only=True, forbid_unknown_fields=True):
    limit: int = 100
    after: str | None = None  # keyset pagination on workflow id
    include_archived: bool = False


class RemoveWorkflow(ApiRequest, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Archive (keep, hide, no new runs) or delete (with its versions and runs) a workflow."""

    workflow_id: str
    reason: str = ""
    force: bool = False  # even with queued or running runs (archive: they finish; delete: cancelled)


class SetRunStrategy(ApiRequest, frozen=True, kw_only=True, forbid_unknown_fields=True):
    workflow_id: str
    run_strategy: str
    max_concurrency: int | None = None
    reason: str = ""  # why (recorded with the actor in the workflow's audit trail)
    request_id: str | None = None  # a retry with the same id is recorded once


class StartInstance(ApiRequest, frozen=True, kw_only=True, forbid_unknown_fields=True):
    workflow_id: str
    params: dict[str, Any] = {}
    request_id: str | None = None
    version: int | None = None


class InstanceRef(ApiRequest, frozen=True, kw_only=True, forbid_unknown_fields=True):
    instance_id: str
    timeline_limit: int = 200
    steps_limit: int = 1000  # at most 1000 steps' details per reply (fewer when they are large)
    steps_offset: int = 0  # where the page starts: ``steps_next`` of the previous reply


class ListInstances(ApiRequest, frozen=True, kw_only=True, forbid_unknown_fields=True):
    workflow_id: str | None = None
    status: str | None = None
    since: float | None = None  # epoch seconds (created at or after)
    until: float | None = None
    limit: int = 50
    cursor: int | None = None  # seq of the last row of the previous page
    include_children: bool = False  # foreach/loop iterations and subworkflow runs too


class ListIterations(ApiRequest, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The child runs of a foreach, loop or subworkflow step, in iteration order, paginated."""

    instance_id: str
    step_id: str
    status: str | None = None
    after: int | None = None  # iteration index of the last row of the previous page
    limit: int = 100


class InstanceAction(ApiRequest, frozen=True, kw_only=True, forbid_unknown_fields=True):
    instance_id: str
    reason: str = ""
    step_id: str | None = None  # restart --from STEP, skip STEP
    request_id: str | None = None


class WorkflowAction(ApiRequest, frozen=True, kw_only=True, forbid_unknown_fields=True):
    workflow_id: str
    reason: str = ""
    request_id: str | None = None


class SetTag(ApiRequest, frozen=True, kw_only=True, forbid_unknown_fields=True):
    tag: str
    limit: int | None = None  # None removes the limit


class TagRef(ApiRequest, frozen=True, kw_only=True, forbid_unknown_fields=True):
    tag: str | None = None


class ApiError(Exception):
    """A structured API error (also raised by the client when a reply carries one)."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}

    def to_json(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


# --- signals (served beside the others; see legato.trigger.signal_api) -------------------------------


class SendSignal(ApiRequest, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    params: dict[str, Any] = {}
    id: str | None = None  # the signal's id (Nats-Msg-Id); a new one when absent


class ListSignals(ApiRequest, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str | None = None
    rejected: bool = False  # only the rejected ones
    limit: int = 50
    before: int | None = None  # storage seq of the last row of the previous page


class PendingSignals(ApiRequest, frozen=True, kw_only=True, forbid_unknown_fields=True):
    workflow_id: str | None = None
    limit: int = 100


class SignalLineage(ApiRequest, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """For a signal (``name`` + ``id``) or a run (``instance_id``): what it started, recursively."""

    name: str | None = None
    id: str | None = None
    instance_id: str | None = None
    depth: int = 5


class SetSignalSchema(ApiRequest, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Declare a signal's shape (``required`` field names, ``fields`` types); ``schema: null`` removes it."""

    name: str
    schema: dict[str, Any] | None = None


# --- dead letters (see legato.trigger.dead_letter_api) -------------------------------------------------


class ListDeadLetters(ApiRequest, frozen=True, kw_only=True, forbid_unknown_fields=True):
    limit: int = 50
    before: int | None = None  # id of the last row of the previous page (newest first)
    include_done: bool = False  # replayed and discarded ones too


class DeadLetterRef(ApiRequest, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: int
    reason: str = ""


class GetDeadLetter(ApiRequest, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: int
    payload_offset: int = 0  # a message too big for one reply comes in parts: ``payload_next_offset``


# --- backfills (see legato.trigger.backfill) ---------------------------------------------------------


class StartBackfill(ApiRequest, frozen=True, kw_only=True, forbid_unknown_fields=True):
    workflow_id: str
    start: str  # --from: a date or an ISO time (UTC when it has no offset)
    end: str  # --to: the last period starts at or before it
    step: str | float = "1d"
    params: dict[str, Any] = {}
    concurrency: int = 4
    priority: str = "low"  # low | normal | high (legato.core.admission.BACKFILL_PRIORITIES)
    dry_run: bool = False


class BackfillRef(ApiRequest, frozen=True, kw_only=True, forbid_unknown_fields=True):
    backfill_id: str


class ListBackfills(ApiRequest, frozen=True, kw_only=True, forbid_unknown_fields=True):
    workflow_id: str | None = None
    limit: int = 50


class CancelBackfill(ApiRequest, frozen=True, kw_only=True, forbid_unknown_fields=True):
    backfill_id: str
    reason: str
    running: bool = False  # also stop the runs already running
