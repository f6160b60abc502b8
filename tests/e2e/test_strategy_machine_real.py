"""The run-strategy state machine against the real scheduler: real NATS, Postgres and processes.

The same rules as the engine-level machine (tests/unit/scheduler), far fewer examples: each step is a
real API call, a step outcome decided by a file the running step waits for, or a kill -9 and restart
of the scheduler; after each step the runs' statuses in Postgres must equal the model's and the
timeline rows must pass the invariant checker.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from legato.config.settings import Settings
from tests.support.strategy_machine import STRATEGIES, StrategyMachine, StrategySystem
from tests.support.strategy_real import RealSystem, RealWorld

REAL_SETTINGS = settings(
    max_examples=3,
    stateful_step_count=15,
    deadline=None,
    phases=[Phase.generate],  # shrinking real runs would take minutes; a failure prints its steps
    suppress_health_check=list(HealthCheck),
    database=None,
)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_machine_against_real_scheduler(settings: Settings, tmp_path: Path, strategy: str) -> None:
    counter = itertools.count()
    with RealWorld(settings, tmp_path) as world:

        class RealMachine(StrategyMachine):
            strategy_choices = (strategy,)

            def make_system(self, strategy: str, max_concurrency: int) -> StrategySystem:
                return RealSystem(world, f"sm{next(counter)}", strategy, max_concurrency)

        run_state_machine_as_test(RealMachine, settings=REAL_SETTINGS)
