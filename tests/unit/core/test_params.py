"""Run param resolution: precedence, coercion, expression order, and every failure reported at once."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from legato.core import (
    CompiledWorkflow,
    InstanceInfo,
    ParamError,
    coerce,
    compile_workflow,
    from_json_value,
    to_json_value,
)
from legato.sel import DateRange
from tests.unit.core.builders import definition, parse

START = datetime(2026, 11, 8, 6, 0, tzinfo=UTC)
INSTANCE = InstanceInfo(id="run-1", workflow_id="wf", version=3, start_time=START, trigger={"kind": "api"})


def compiled(params: dict[str, Any], **extra: Any) -> CompiledWorkflow:
    return compile_workflow(parse(definition(params=params, **extra)))


def resolve(params: dict[str, Any], supplied: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return compiled(params, **extra).resolve_run_params(supplied or {}, instance=INSTANCE)


def problems(params: dict[str, Any], supplied: dict[str, Any]) -> list[str]:
    with pytest.raises(ParamError) as info:
        resolve(params, supplied)
    return [str(i) for i in info.value.issues]


def test_defaults_then_supplied_values() -> None:
    params = {"a": 1, "b": {"type": "string", "default": "x"}, "c": {"type": "int"}}
    assert resolve(params) == {"a": 1, "b": "x", "c": None}
    assert resolve(params, {"a": 5, "c": "7"}) == {"a": 5, "b": "x", "c": 7}


def test_expressions_are_computed_in_dependency_order_unless_supplied() -> None:
    params = {
        "end": {"type": "date", "expr": "params.start + days(params.days - 1)"},
        "label": {"type": "string", "expr": "format('{}..{}', params.start, params.end)"},
        "start": {"type": "date", "default": "2026-11-01"},
        "days": 7,
    }
    assert resolve(params) == {
        "start": date(2026, 11, 1),
        "days": 7,
        "end": date(2026, 11, 7),
        "label": "2026-11-01..2026-11-07",
    }
    assert resolve(params, {"end": "2026-12-01"})["label"] == "2026-11-01..2026-12-01"


def test_expressions_see_the_instance_and_now_is_the_start_time() -> None:
    params = {
        "run": {"type": "string", "expr": "instance.id + '@' + str(instance.version)"},
        "day": {"type": "date", "expr": "today()"},
        "kind": {"type": "string", "expr": "instance.trigger.kind"},
    }
    assert resolve(params) == {"run": "run-1@3", "day": date(2026, 11, 8), "kind": "api"}


def test_fixed_params_cannot_be_supplied() -> None:
    params = {"env": {"type": "string", "default": "prod", "mode": "fixed"}}
    assert resolve(params) == {"env": "prod"}
    assert problems(params, {"env": "dev"}) == ["params.env: fixed by the definition: a run cannot set it"]


@pytest.mark.parametrize(
    ("kind", "supplied", "expected"),
    [
        ("string", 42, "42"),
        ("string", True, "true"),
        ("int", "42", 42),
        ("int", 42.0, 42),
        ("float", "1.5", 1.5),
        ("float", 2, 2.0),
        ("bool", "true", True),
        ("bool", "NO", False),
        ("bool", 1, True),
        ("date", "2026-11-01", date(2026, 11, 1)),
        ("date", date(2026, 11, 1), date(2026, 11, 1)),
        ("datetime", "2026-11-01T02:00:00Z", datetime(2026, 11, 1, 2, tzinfo=UTC)),
        ("datetime", "2026-11-01T02:00:00", datetime(2026, 11, 1, 2, tzinfo=UTC)),
        ("datetime", "2026-11-01T02:00:00+01:00", datetime(2026, 11, 1, 1, tzinfo=UTC)),
        ("duration", "1h30m", timedelta(minutes=90)),
        ("duration", 90, timedelta(seconds=90)),
        ("list", "eu, us", ["eu", "us"]),
        ("list", '["eu", 1]', ["eu", 1]),
        ("list", "", []),
        ("list", ("a",), ["a"]),
        ("map", '{"a": 1}', {"a": 1}),
        ("map", {"a": 1}, {"a": 1}),
    ],
)
def test_coercion_of_supplied_values(kind: str, supplied: Any, expected: Any) -> None:
    assert resolve({"x": {"type": kind}}, {"x": supplied}) == {"x": expected}


@pytest.mark.parametrize(
    ("kind", "supplied", "message"),
    [
        ("int", "4.5", "params.x: expected an int, got '4.5'"),
        ("int", True, "params.x: expected an int, got True"),
        ("float", "fast", "params.x: expected a float, got 'fast'"),
        ("bool", "maybe", "params.x: expected a bool (true/false), got 'maybe'"),
        ("date", "11/01/2026", "params.x: expected a date (YYYY-MM-DD), got '11/01/2026'"),
        (
            "date",
            "2026-11-01T00:00:00Z",
            "params.x: expected a date (YYYY-MM-DD), got '2026-11-01T00:00:00Z'",
        ),
        ("datetime", "tomorrow", "params.x: expected a datetime (ISO 8601), got 'tomorrow'"),
        ("duration", "soon", "params.x: expected a duration (90s, 10m, 1h30m or seconds), got 'soon'"),
        ("list", 3, "params.x: expected a list, got 3"),
        ("map", "[1]", "params.x: expected a map (a JSON object), got '[1]'"),
        ("string", [1], "params.x: expected a string, got list"),
    ],
)
def test_coercion_errors_name_the_param_and_the_type(kind: str, supplied: Any, message: str) -> None:
    assert problems({"x": {"type": kind}}, {"x": supplied}) == [message]


def test_every_problem_is_reported_and_dependents_are_skipped() -> None:
    params = {
        "n": {"type": "int"},
        "double": {"type": "int", "expr": "params.n * 2"},
        "env": {"type": "string", "required": True},
        "region": {"type": "string", "default": "eu", "values": ["eu", "us"]},
    }
    assert problems(params, {"n": "x", "region": "ap", "extra": 1, "regoin": "eu"}) == [
        "params.extra: not a declared param",
        "params.regoin: not a declared param (did you mean 'region'?)",
        "params.n: expected an int, got 'x'",
        "params.env: required: the run must supply a value",
        "params.region: must be one of eu, us, got 'ap'",
    ]


def test_expression_failures_and_bad_results_are_param_errors() -> None:
    assert problems({"x": {"type": "int", "expr": "1 / 0"}}, {}) == [
        "params.x: division by zero at 1:1 in `1 / 0`"
    ]
    assert problems({"x": {"type": "int", "expr": "'many'"}}, {}) == [
        "params.x: its expr gave string: expected an int, got 'many'"
    ]


def test_none_means_not_supplied() -> None:
    assert resolve({"x": 3}, {"x": None}) == {"x": 3}


def test_list_and_map_defaults_are_fresh_copies() -> None:
    workflow = compiled({"xs": ["a"], "m": {"k": [1]}})
    first = workflow.resolve_run_params({}, instance=INSTANCE)
    first["xs"].append("mutated")
    first["m"]["k"].append(2)
    assert workflow.resolve_run_params({}, instance=INSTANCE) == {"xs": ["a"], "m": {"k": [1]}}


def test_json_form_round_trips_by_type() -> None:
    values = {
        "date": date(2026, 11, 1),
        "datetime": datetime(2026, 11, 1, 2, 30, tzinfo=UTC),
        "duration": timedelta(minutes=90),
        "list": [date(2026, 1, 1), timedelta(seconds=1.5)],
        "map": {"d": date(2026, 1, 1)},
    }
    assert to_json_value(values) == {
        "date": "2026-11-01",
        "datetime": "2026-11-01T02:30:00+00:00",
        "duration": 5400,
        "list": ["2026-01-01", 1.5],
        "map": {"d": "2026-01-01"},
    }
    for kind in ("date", "datetime", "duration"):
        assert from_json_value(to_json_value(values[kind]), kind) == values[kind]  # type: ignore[arg-type]
    assert to_json_value(range(3)) == [0, 1, 2]
    assert to_json_value({3, 1}) == [1, 3]
    assert to_json_value(DateRange(date(2026, 1, 1), timedelta(days=1), 2)) == ["2026-01-01", "2026-01-02"]
    with pytest.raises(ValueError, match="cannot write a object as JSON"):
        to_json_value(object())


def test_coerce_rejects_unknown_types() -> None:
    with pytest.raises(ValueError, match="unknown param type"):
        coerce(1, "decimal")  # type: ignore[arg-type]
