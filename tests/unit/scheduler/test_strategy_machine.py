"""Run strategies under random interleavings: the scheduler's engine against the pure model."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from tests.support.strategy_engine import EngineDriver
from tests.support.strategy_machine import StrategyMachine, StrategySystem
from tests.support.strategy_model import InvariantViolation, RunEvent, StrategyModel, check_history


class EngineSystem(EngineDriver):
    def restart_scheduler(self) -> None:
        """The engine holds no process state beyond the workflow state the actor reloads."""

    def settle(self, expected: dict[str, str]) -> None:
        """Every message is applied synchronously."""


class EngineMachine(StrategyMachine):
    stops_confirm_at_once = False  # the rule stop_confirmed says when (any interleaving)

    def make_system(self, strategy: str, max_concurrency: int) -> StrategySystem:
        return EngineSystem(strategy, max_concurrency)

    @precondition(lambda self: bool(self.model.running()))
    @rule(i=st.integers(0, 10))
    def run_times_out(self, i: int) -> None:
        """Run timeouts only here: on the real services they would need waiting on the clock."""
        name = self._pick(self.model.running(), i)
        self.model.time_out(name)
        system = self.system
        assert isinstance(system, EngineSystem)
        system.time_out(name)


TestEngineAgainstModel = EngineMachine.TestCase
TestEngineAgainstModel.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def test_model_strict_sequential_blocks_until_unblock() -> None:
    m = StrategyModel("strict_sequential")
    a, b, c = m.trigger(), m.trigger(), m.trigger()
    m.finish(a, ok=False)
    assert m.statuses() == {a: "failed", b: "queued", c: "queued"} and m.blocked_by == a
    m.unblock()
    assert m.statuses() == {a: "failed", b: "running", c: "queued"}


@pytest.mark.parametrize(
    ("strategy", "events", "message"),
    [
        ("sequential", [("a", "created"), ("b", "created"), ("a", "started"), ("b", "started")], "limit 1"),
        ("sequential", [("a", "created"), ("b", "created"), ("b", "started")], "FIFO"),
        ("sequential", [("a", "created"), ("a", "started"), ("a", "succeeded"), ("a", "started")], "while"),
        (
            "strict_sequential",
            [("a", "created"), ("b", "created"), ("a", "started"), ("a", "failed"), ("b", "started")],
            "past failed run a",
        ),
        ("sequential", [("a", "created"), ("a", "created")], "created twice"),
    ],
)
def test_history_checker_catches_violations(
    strategy: str, events: list[tuple[str, str]], message: str
) -> None:
    with pytest.raises(InvariantViolation, match=message):
        check_history([RunEvent(r, e) for r, e in events], strategy=strategy, limit=1)


def test_history_checker_counts_every_trigger() -> None:
    with pytest.raises(InvariantViolation, match="3 triggers but 2 runs"):
        check_history(
            [RunEvent("a", "created"), RunEvent("b", "created")], strategy="parallel", limit=2, triggers=3
        )
