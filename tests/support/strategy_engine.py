"""The scheduler's own strategy code (RunEngine, strategies, operator actions) driven in memory.

Each operation runs as the actor would apply one message: a fresh unit of work over the same
workflow state, the message's effect, then ``admit``. Nothing is flushed; the harness reads the
engine's state and the timeline entries it would have written.
"""

from __future__ import annotations

from datetime import UTC, datetime

from legato.bus.topology import Topology
from legato.core import compile_workflow, parse_definition
from legato.protocol.messages import AttemptFinished, StartRun, TriggerInfo
from legato.scheduler import actions
from legato.scheduler.engine import DispatchLimits, RunEngine
from legato.scheduler.state import InstanceState, UnitOfWork, WorkflowRow, WorkflowState
from legato.scheduler.strategies import admit, admit_new, apply_strategy_change
from tests.support.strategy_model import RunEvent

ONE_STEP = """
id: wf
run_strategy: sequential
steps:
  - id: work
    type: noop
"""

# Timeline events that are run events for the invariant checker.
RUN_EVENTS = ("created", "started", "succeeded", "failed", "timed_out", "stopped", "skipped")
OPERATOR_EVENTS = {"restart_requested": "restart_requested", "unblocked": "unblocked"}


def run_events(rows: list[tuple[str, str]]) -> list[RunEvent]:
    """Run-level timeline rows (instance, event) in commit order -> run events (others dropped)."""
    out: list[RunEvent] = []
    for run, event in rows:
        if event in RUN_EVENTS:
            out.append(RunEvent(run, event))
        elif event in OPERATOR_EVENTS:
            out.append(RunEvent(run, OPERATOR_EVENTS[event]))
    return out


class EngineDriver:
    """One workflow's state in the real RunEngine, fed with the messages a run strategy reacts to."""

    def __init__(self, strategy: str, max_concurrency: int) -> None:
        self.compiled = compile_workflow(parse_definition(ONE_STEP))
        self.state = WorkflowState(
            row=WorkflowRow(
                id="wf",
                active=True,
                active_version=1,
                run_strategy=strategy,
                max_concurrency=max_concurrency if strategy == "parallel" else 1,
                paused=False,
                blocked_by=None,
                blocked_since=None,
                running_count=0,
                queued_count=0,
            )
        )
        self.ended: dict[str, InstanceState] = {}  # the actor would reload these from Postgres
        self.timeline: list[tuple[str, str]] = []
        self.topology = Topology(partitions=1)

    def _engine(self) -> RunEngine:
        return RunEngine(
            self.state, UnitOfWork(), topology=self.topology, compiled=lambda wf, v: self.compiled
        )

    def _commit(self, engine: RunEngine) -> None:
        admit(engine)
        for entry in engine.uow.timeline:
            if entry.step_id is None:
                self.timeline.append((entry.instance_id, entry.event))
        for inst in engine.uow.instances.values():
            if inst.terminal:
                self.ended[inst.id] = inst

    def trigger(self, name: str) -> None:
        engine = self._engine()
        msg = StartRun(
            workflow_id="wf",
            trigger_key=f"api:{name}",
            instance_id=name,
            trigger=TriggerInfo(kind="api"),
            params={},
            requested_at=datetime.now(UTC).timestamp(),
        )
        inst = engine.new_instance(msg, 1, "created")
        assert engine.resolve_params(inst)
        admit_new(engine, inst)
        self._commit(engine)

    def finish(self, name: str, ok: bool) -> None:
        engine = self._engine()
        inst = self.state.instances[name]
        st = inst.steps["work"]
        assert st.current_attempt_id is not None
        engine.on_attempt_finished(
            AttemptFinished(
                attempt_id=st.current_attempt_id,
                workflow_id="wf",
                instance_id=name,
                step_id="work",
                outcome="succeeded" if ok else "failed",
                error=None if ok else "exit 1",
            )
        )
        self._commit(engine)

    def confirm_stop(self, name: str) -> None:
        """The executor reports the cancelled attempts of the ended run as over."""
        engine = self._engine()
        for stopping in [s for s in self.state.stopping.values() if s.instance_id == name]:
            engine.on_attempt_finished(
                AttemptFinished(
                    attempt_id=stopping.attempt_id,
                    workflow_id="wf",
                    instance_id=name,
                    step_id=stopping.step_id,
                    outcome="cancelled",
                    error="cancelled: run ended stopped",
                )
            )
        self._commit(engine)

    def time_out(self, name: str) -> None:
        """The run's timeout timer fires."""
        engine = self._engine()
        engine.on_run_timeout_timer(self.state.instances[name])
        self._commit(engine)

    def stop(self, name: str, kill: bool = False) -> None:
        engine = self._engine()
        inst = self.state.instances.get(name)
        if inst is not None:
            actions._end_by_operator(engine, inst, "kill" if kill else "stop", "test", "model check")
        self._commit(engine)

    def restart(self, name: str) -> None:
        engine = self._engine()
        inst = self.ended.get(name)
        applies = inst is not None and name not in self.state.instances
        if (
            applies
            and inst is not None
            and actions._restart(engine, inst, None, "test", "check") == "applied"
        ):
            del self.ended[name]
        self._commit(engine)

    def unblock(self) -> None:
        engine = self._engine()
        actions._unblock(engine, None, "test", "model check")
        self._commit(engine)

    def change_strategy(self, strategy: str, max_concurrency: int) -> None:
        if strategy in ("first_only", "last_only") and len(self.state.instances) > 1:
            return  # the API refuses it (tested against the real API in e2e)
        self.state.row.run_strategy = strategy
        self.state.row.max_concurrency = max_concurrency
        engine = self._engine()
        apply_strategy_change(engine)
        self._commit(engine)

    def statuses(self) -> dict[str, str]:
        out = {name: inst.status for name, inst in self.ended.items()}
        out.update({name: inst.status for name, inst in self.state.instances.items()})
        return out

    def events(self) -> list[RunEvent]:
        return run_events(self.timeline)


class WindowDriver(EngineDriver):
    """Each operation is a batch of its own, as the actor applies it, with ``limits`` (a dispatch window
    of 2); ``waiting_results`` are the attempts whose results the actor's mailbox holds for a later
    batch."""

    limits = DispatchLimits(window=2, lead=1)
    waiting_results: frozenset[str] = frozenset()

    def _engine(self) -> RunEngine:
        self.state.begin_batch(self.waiting_results)
        return RunEngine(
            self.state,
            UnitOfWork(),
            topology=self.topology,
            compiled=lambda wf, v: self.compiled,
            dispatch=self.limits,
        )

    def _commit(self, engine: RunEngine) -> None:
        engine.drain_dispatch_backlog()  # as the actor does after each message
        super()._commit(engine)
