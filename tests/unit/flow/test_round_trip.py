"""YAML → code → YAML loses nothing: over every example, and over random valid definitions."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from legato import flow as flow_module
from legato.core import parse_definition
from legato.flow import Workflow, dump_yaml
from tests.unit.flow.strategies import workflows

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
FILES = sorted(EXAMPLES.rglob("*.yaml"))


def assert_lossless(text: str) -> None:
    definition = parse_definition(text)
    code = Workflow.from_yaml(text)
    assert code.definition() == definition  # YAML → code: the same definition
    out = code.to_yaml()
    assert parse_definition(out) == definition  # code → YAML: the same definition again
    again = Workflow.from_yaml(out)
    assert again == code  # the same code objects
    assert again.to_yaml() == out  # and the canonical YAML is a fixed point
    assert eval(repr(code), vars(flow_module)) == code  # the repr is the code that builds it


def test_the_examples_are_all_seen() -> None:
    assert len(FILES) >= 15


@pytest.mark.parametrize("path", FILES, ids=[str(f.relative_to(EXAMPLES)) for f in FILES])
def test_every_example_round_trips_through_code(path: Path) -> None:
    assert_lossless(path.read_text())


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(workflows())
def test_random_definitions_round_trip_through_code(flow: Workflow) -> None:
    definition = flow.definition()  # the strategy builds only valid workflows: an error here is its bug
    # The builder gives exactly what its YAML gives, read by the same reader.
    assert parse_definition(dump_yaml(flow.to_data())) == definition
    assert Workflow.from_definition(definition).definition() == definition
    assert_lossless(flow.to_yaml())
