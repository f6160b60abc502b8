"""Canonical JSON of definitions: stable, complete, round-tripping; digests identify content."""

from __future__ import annotations

import json

from legato.core import (
    SCHEMA_VERSION,
    ForeachStep,
    definition_digest,
    definition_from_json,
    definition_to_json,
    parse_definition,
)
from tests.unit.core.builders import definition, parse

YAML = """
id: wf
timeout: 1h
run_strategy: {type: parallel, max_concurrency: 3}
params:
  d: {type: date, default: 2026-11-01}
triggers:
  - {type: signal, signals: [{name: s, match: {n: {">": 1}}}], since: "2026-11-01T00:00:00Z"}
steps:
  - id: f
    type: foreach
    foreach: {over: "range(3)", as: x, steps: [{id: a, type: noop}]}
  - {id: l, type: loop, depends_on: [f], loop: {while: "false", max_iterations: 2, steps: [{id: b, type: noop}]}}
"""


def test_canonical_json_has_sorted_keys_and_every_field() -> None:
    defn = parse_definition(YAML)
    data = json.loads(definition_to_json(defn))
    assert list(data) == sorted(data)
    assert data["schema"] == SCHEMA_VERSION
    assert data["timeout"] == 3600.0
    assert data["run_strategy"] == {"max_concurrency": 3, "type": "parallel"}
    assert data["steps"][0]["type"] == "foreach"
    assert data["steps"][0]["foreach"]["as"] == "x"
    assert data["steps"][1]["loop"]["while"] == "false"
    assert data["triggers"][0]["since"] == "2026-11-01T00:00:00Z"
    assert data["steps"][0]["retry"] == {
        "backoff": {"initial": 1.0, "max": 600.0, "multiplier": 2.0, "type": "exponential"},
        "error": 0,
        "platform": 10,
        "timeout": 0,
    }


def test_round_trip_and_digest() -> None:
    defn = parse_definition(YAML)
    again = definition_from_json(definition_to_json(defn))
    assert again == defn
    assert isinstance(again.steps[0], ForeachStep)
    assert definition_digest(again) == definition_digest(defn)
    # the same definition written differently (JSON, shorthand spelled out) has the same digest
    assert definition_digest(parse(definition(steps=[{"id": "a", "type": "noop"}]))) == definition_digest(
        parse_definition(
            '{"id": "wf", "schema": 1, "run_strategy": {"type": "sequential"}, "steps": [{"type": "noop", "id": "a", "retry": {"error": 0}}]}'
        )
    )
    assert definition_digest(parse(definition(description="x"))) != definition_digest(parse(definition()))
