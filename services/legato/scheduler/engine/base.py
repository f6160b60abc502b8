"""The state one engine works on and the small effects every part records (timers, timeline notes)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from legato.bus.topology import Topology, partition_of
from legato.core import to_json_value
from legato.core.reasons import Reason
from legato.scheduler.run_views import CompiledLookup, RunViews
from legato.scheduler.state import (
    AttemptState,
    InstanceState,
    NewTimer,
    StepState,
    TimelineEntry,
    UnitOfWork,
    WorkflowState,
)

QUIET_FOR_ITERATIONS = frozenset(
    {"created", "started", "succeeded", "step_dispatched", "step_succeeded", "step_skipped"}
)
# Slack past a step's timeout before the scheduler itself declares an attempt timed out (the executor
# enforces the timeout; this only covers an executor that went silent).
STEP_TIMEOUT_GRACE = 30.0


def jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    """Typed values as JSON-ready ones (for the rows and messages that carry them)."""
    return {k: to_json_value(v) for k, v in values.items()}


# At most this many attempts of one workflow wait (dispatched, not started) in one executor queue; its
# other ready steps are held in the scheduler and sent as those start. Without it a 10,000-step fan-out
# puts 10,000 items in the queue at once.
DISPATCH_WINDOW = 256
# Each executor queue has two lanes: executors take the lead lane's attempts first, the bulk lane's when
# the lead lane has none. A workflow sends an attempt to the lead lane while fewer than this many of its
# attempts sent there are waiting or running, else to the bulk lane: a fan-out keeps at most this many in
# the lead lane, so another workflow's next step waits behind those few, not behind the fan-out.
DISPATCH_LEAD = 4


@dataclass(frozen=True)
class DispatchLimits:
    """What one workflow may have waiting in an executor queue (``LEGATO_DISPATCH_WINDOW``, ``_LEAD``)."""

    window: int = DISPATCH_WINDOW
    lead: int = DISPATCH_LEAD


DISPATCH_LIMITS = DispatchLimits()


class EngineBase:
    """The state one engine works on and the small effects every part records (timers, timeline notes)."""

    def __init__(
        self,
        state: WorkflowState,
        uow: UnitOfWork,
        *,
        topology: Topology,
        compiled: CompiledLookup,
        items_cache: dict[tuple[str, str], Any] | None = None,
        dispatch: DispatchLimits = DISPATCH_LIMITS,
    ) -> None:
        self.state = state
        self.dispatch_window = max(1, dispatch.window)
        self.dispatch_lead = max(1, dispatch.lead)
        self.uow = uow
        self.topology = topology
        self.compiled = compiled
        self.partition = partition_of(state.row.id, topology.partitions)
        # Set when a slot was freed: waiting steps are retried after the current message.
        self.permits_freed = False
        # What expressions see of the runs (read-only): graphs, typed params, environments, foreach items.
        self.views = RunViews(state, compiled, items_cache)
        self.graph = self.views.graph
        self.env = self.views.env
        self.typed_params = self.views.typed_params
        self.instance_info = self.views.instance_info
        self.foreach_items = self.views.foreach_items

    def add_timer(
        self,
        inst: InstanceState,
        kind: str,
        fire_at: datetime,
        *,
        step_id: str | None = None,
        attempt_id: str | None = None,
    ) -> None:
        self.uow.timers.append(
            NewTimer(
                partition=self.partition,
                workflow_id=inst.workflow_id,
                instance_id=inst.id,
                kind=kind,
                fire_at=fire_at,
                step_id=step_id,
                attempt_id=attempt_id,
            )
        )

    def note(
        self,
        inst: InstanceState,
        event: str,
        message: str,
        *,
        step_id: str | None = None,
        actor: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        if inst.body_path and event in QUIET_FOR_ITERATIONS:
            return  # 100,000 iterations need no 400,000 routine entries; failures are still noted
        self.uow.note(TimelineEntry(inst.id, event, message, step_id=step_id, actor=actor, details=details))

    def _attempt_left_queue(self, at: AttemptState) -> None:
        self.state.note_left_queue(at)

    if TYPE_CHECKING:  # what the parts call on each other (RunEngine has them all)

        def start(self, inst: InstanceState) -> None: ...
        def finish(
            self,
            inst: InstanceState,
            status: str,
            *,
            reason: Reason | None = None,
            error: str | None = None,
            actor: str | None = None,
            force: bool = False,
        ) -> None: ...
        def advance(self, inst: InstanceState) -> None: ...
        def fail_step_without_attempt(self, inst: InstanceState, step_id: str, error: str) -> None: ...
        def dispatch(
            self,
            inst: InstanceState,
            step_id: str,
            *,
            retry_of: StepState | None = None,
            draining: bool = False,
        ) -> None: ...
        def release_permits(self, inst: InstanceState, st: StepState, *, attempt_id: str | None) -> None: ...
        def after_step_failure(self, inst: InstanceState, st: StepState) -> None: ...
        def cancel_running_steps(
            self, inst: InstanceState, status: str, why: str, *, force: bool = False, hold: bool = False
        ) -> list[AttemptState]: ...
        def send_cancel(self, attempt_id: str, reason: str, *, force: bool = False) -> None: ...
        def _start_child_step(self, inst: InstanceState, st: StepState) -> None: ...
        def stop_children(self, inst: InstanceState, st: StepState, why: str) -> None: ...
        def _report_to_parent(self, child: InstanceState) -> None: ...
        def signals_ready(self, inst: InstanceState, st: StepState) -> bool: ...
        def publish_signals(self, inst: InstanceState, st: StepState, attempt_id: str) -> bool: ...
