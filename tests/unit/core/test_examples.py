"""The example definitions the demo loads: all valid, and using only quick, portable step types."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from legato.core import (
    ShellStep,
    SignalTrigger,
    compile_workflow,
    definition_digest,
    definition_from_json,
    definition_to_json,
    parse_definition,
)
from legato.core.model import RUN_STRATEGIES, Step, step_body
from legato.core.plan import validate_text

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
FILES = (
    sorted(EXAMPLES.glob("*.yaml"))
    + sorted(EXAMPLES.glob("*.json"))
    + sorted(EXAMPLES.glob("strategies/*.yaml"))
)
PORTABLE = {"echo", "sleep", "test", "printf", "true", "false", "exit"}


def all_steps(steps: list[Step]) -> list[Step]:
    out = []
    for step in steps:
        out.append(step)
        out.extend(all_steps(step_body(step) or []))
    return out


def test_the_required_examples_exist() -> None:
    names = {f.name for f in FILES}
    assert {
        "hello.yaml",
        "daily-backfill.yaml",
        "table-snapshot.yaml",
        "billing.yaml",
        "audit-chain.yaml",
    } <= names


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_every_example_validates_and_round_trips(path: Path) -> None:
    text = path.read_text()
    assert validate_text(text, path.name) == []
    defn = parse_definition(text, source=path.name)
    assert defn.id == path.stem
    stored = definition_to_json(defn)
    assert definition_from_json(stored) == defn
    assert definition_digest(parse_definition(text)) == definition_digest(defn)
    compile_workflow(defn)


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_examples_run_quickly_on_any_linux_box(path: Path) -> None:
    defn = parse_definition(path.read_text())
    for step in all_steps(defn.steps):
        assert step.type in ("noop", "sleep", "shell", "foreach", "loop"), step.id
        if isinstance(step, ShellStep):
            for line in re.split(r"\n|&&|\|\||;", re.sub(r"\$\{[^}]*\}", "X", step.command)):
                words = line.strip().split()
                if words:
                    assert words[0] in PORTABLE, (step.id, line)


def test_examples_show_what_they_are_meant_to_show() -> None:
    load = {f.stem: parse_definition(f.read_text()) for f in FILES}
    backfill = load["daily-backfill"]
    assert (backfill.run_strategy.type, backfill.run_strategy.max_concurrency) == ("parallel", 4)
    assert any(s.type == "foreach" and "date_range(params." in s.foreach.over for s in backfill.steps)  # type: ignore[union-attr]
    assert load["table-snapshot"].run_strategy.type == "last_only"
    billing = load["billing"]
    assert billing.run_strategy.type == "first_only"
    [trigger] = billing.triggers
    assert isinstance(trigger, SignalTrigger)
    assert [leg.name for leg in trigger.signals] == ["orders_ready", "payments_ready"] and trigger.join == [
        "date"
    ]
    audit = load["audit-chain"]
    assert audit.run_strategy.type == "strict_sequential"
    assert any(t.when for s in audit.steps for t in s.next)
    hello = load["hello"]
    assert hello.run_strategy.type == "sequential" and hello.params
    greet = hello.steps[0]
    assert greet.outputs and any(t.when and "steps.greet.outputs" in t.when for t in greet.next)
    assert any("steps.greet.outputs" in str(v) for s in hello.steps[1:] for v in s.params.values())


def test_there_is_a_strategy_example_for_each_strategy() -> None:
    shown = {parse_definition(f.read_text()).run_strategy.type for f in EXAMPLES.glob("strategies/*.yaml")}
    assert shown == set(RUN_STRATEGIES)
