"""A hypothesis state machine over run strategies: random triggers, step outcomes, stops, restarts,
unblocks and scheduler restarts, applied to the pure model and to a system under test in lock step.

After every step the system's run statuses must equal the model's, and the system's own event history
must pass the invariant checker (which does not trust the model). Subclasses choose the system: the
in-memory engine (many examples) or the real services (a few).
"""

from __future__ import annotations

from typing import Protocol

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from legato.core.model import RUN_STRATEGIES
from tests.support.strategy_model import RESTARTABLE, RunEvent, StrategyModel, check_history

STRATEGIES = RUN_STRATEGIES
MAX_RUNS = 12
MAX_SCHEDULER_RESTARTS = 2
MAX_STRATEGY_CHANGES = 3


class StrategySystem(Protocol):
    def trigger(self, name: str) -> None: ...
    def finish(self, name: str, ok: bool) -> None: ...
    def confirm_stop(self, name: str) -> None: ...
    def stop(self, name: str, kill: bool = False) -> None: ...
    def restart(self, name: str) -> None: ...
    def unblock(self) -> None: ...
    def change_strategy(self, strategy: str, max_concurrency: int) -> None: ...
    def restart_scheduler(self) -> None: ...
    def settle(self, expected: dict[str, str]) -> None: ...
    def statuses(self) -> dict[str, str]: ...
    def events(self) -> list[RunEvent]: ...


class StrategyMachine(RuleBasedStateMachine):
    model: StrategyModel
    system: StrategySystem
    scheduler_restarts = 0
    model_changes: list[tuple[int, str, int]]

    def make_system(self, strategy: str, max_concurrency: int) -> StrategySystem:
        raise NotImplementedError

    # Subclasses may pin the strategies they explore.
    strategy_choices: tuple[str, ...] = STRATEGIES
    # Real executors confirm a cancelled step's end by themselves; an in-memory system is told when.
    stops_confirm_at_once = True

    @initialize(data=st.data(), max_concurrency=st.integers(0, 3))
    def setup(self, data: st.DataObject, max_concurrency: int) -> None:
        strategy = data.draw(st.sampled_from(self.strategy_choices), label="strategy")
        self.model = StrategyModel(
            strategy, max_concurrency, stops_confirm_at_once=self.stops_confirm_at_once
        )
        self.system = self.make_system(strategy, max_concurrency)
        self.scheduler_restarts = 0
        self.first = (strategy, self.model.limit)
        self.model_changes: list[tuple[int, str, int]] = []
        self.system_changes: list[tuple[int, str, int]] = []

    def _pick(self, names: list[str], i: int) -> str:
        return names[i % len(names)]

    # Bounded, and the queue kept short so that step outcomes and actions get their share of steps.
    @precondition(
        lambda self: (
            len(self.model.runs) < MAX_RUNS
            and len(self.model.with_status("queued", "running")) < self.model.limit + 3
        )
    )
    @rule()
    def trigger(self) -> None:
        name = self.model.trigger()
        self.system.trigger(name)

    @precondition(lambda self: bool(self.model.running()))
    @rule(i=st.integers(0, 10), ok=st.booleans())
    def step_ends(self, i: int, ok: bool) -> None:
        name = self._pick(self.model.running(), i)
        self.model.finish(name, ok)
        self.system.finish(name, ok)

    @precondition(lambda self: bool(self.model.stopping))
    @rule(i=st.integers(0, 10))
    def stop_confirmed(self, i: int) -> None:
        """The executor reports that the step of a run ended while it ran has stopped."""
        name = self._pick(self.model.stopping, i)
        self.model.confirm_stop(name)
        self.system.confirm_stop(name)

    @precondition(lambda self: bool(self.model.with_status("queued", "running")))
    @rule(i=st.integers(0, 10), kill=st.booleans())
    def stop(self, i: int, kill: bool) -> None:
        """An operator stops (or kills: ends at once, no grace) a queued or running run."""
        name = self._pick(self.model.with_status("queued", "running"), i)
        self.model.stop(name)
        self.system.stop(name, kill=kill)

    @precondition(lambda self: bool(self.model.with_status(*RESTARTABLE)))
    @rule(i=st.integers(0, 10))
    def restart(self, i: int) -> None:
        name = self._pick(self.model.with_status(*RESTARTABLE), i)
        self.model.restart(name)
        self.system.restart(name)

    @precondition(lambda self: self.model.blocked_by is not None)
    @rule()
    def unblock(self) -> None:
        self.model.unblock()
        self.system.unblock()

    @rule()
    def time_passes(self) -> None:
        """Nothing new happens: the system must stay where it is (and a machine is never stuck)."""

    @precondition(lambda self: bool(self.model.runs) and self.scheduler_restarts < MAX_SCHEDULER_RESTARTS)
    @rule()
    def restart_scheduler(self) -> None:
        self.scheduler_restarts += 1
        self.system.restart_scheduler()

    @precondition(lambda self: len(self.model_changes) < MAX_STRATEGY_CHANGES)
    @rule(to=st.sampled_from(STRATEGIES), max_concurrency=st.integers(0, 3))
    def change_strategy(self, to: str, max_concurrency: int) -> None:
        """workflow.set_run_strategy (the system refuses what the model refuses)."""
        limit = max_concurrency if to == "parallel" else 1
        model_at, system_at = len(self.model.events), len(self.system.events())
        if self.model.change_strategy(to, limit):
            self.model_changes.append((model_at, to, self.model.limit))
            self.system_changes.append((system_at, to, self.model.limit))
        self.system.change_strategy(to, limit)

    @invariant()
    def matches_model_and_keeps_invariants(self) -> None:
        if not hasattr(self, "model"):
            return
        check_history(
            self.model.events, strategy=self.first[0], limit=self.first[1], changes=self.model_changes
        )
        expected = self.model.statuses()
        self.system.settle(expected)
        final = check_history(
            self.system.events(),
            strategy=self.first[0],
            limit=self.first[1],
            triggers=len(self.model.runs),
            changes=self.system_changes,
        )
        actual = self.system.statuses()
        assert actual == expected, f"system {actual} != model {expected}"
        assert final == expected, f"history says {final}, model {expected}"
