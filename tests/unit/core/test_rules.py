"""Every validation rule: each problem is reported with its path and the rule it breaks."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.core.builders import definition, issues, only_issue, parse

NOOP = {"id": "a", "type": "noop"}


def steps(*items: dict[str, Any]) -> dict[str, Any]:
    return definition(steps=list(items))


# ---------------------------------------------------------------------------- workflow fields

WORKFLOW_CASES: list[tuple[dict[str, Any], str]] = [
    ({"id": "wf", "stepz": []}, "stepz: unknown field (did you mean 'steps'?)"),
    ({"steps": [NOOP]}, "id: required"),
    ({"id": "wf"}, "steps: required"),
    (definition(steps=[]), "steps: must have at least one step"),
    (definition(steps={"a": 1}), "steps: must be a list of steps, got a map"),
    (definition(schema=2), "schema: unsupported schema version 2; this Legato reads schema 1"),
    (definition(id="Daily Backfill"), "id: must match lowercase letters, digits, _ . - (max 128)"),
    (definition(id="x" * 129), "id: must match"),
    (
        definition(criticality="urgent"),
        "criticality: must be one of critical, high, medium, low, got 'urgent'",
    ),
    (definition(run_strategy="random"), "run_strategy.type: must be one of sequential, strict_sequential"),
    (
        definition(run_strategy={"type": "parallel", "max_concurrency": 1001}),
        "run_strategy.max_concurrency: must be <= 1000, got 1001",
    ),
    (
        definition(run_strategy={"type": "parallel", "max_concurrency": -1}),
        "run_strategy.max_concurrency: must be >= 0, got -1",
    ),
    (
        definition(run_strategy={"type": "sequential", "max_concurrency": 3}),
        "run_strategy.max_concurrency: only the parallel strategy takes max_concurrency",
    ),
    (definition(run_strategy={"max_concurrency": 3}), "run_strategy.type: required"),
    (definition(step_concurrency=0), "step_concurrency: must be >= 1, got 0"),
    (definition(step_concurrency=1001), "step_concurrency: must be <= 1000, got 1001"),
    (definition(step_concurrency="many"), "step_concurrency: must be an integer, got a string 'many'"),
    (definition(timeout="soon"), "timeout: invalid duration 'soon'"),
    (definition(timeout=0), "timeout: must be > 0, got 0"),
    (definition(timeout="400d"), "timeout: must be at most 366 days"),
    (definition(tags="x"), ""),  # a single tag is a list of one: no issue
    (definition(tags=[1]), "tags[0]: must be a non-empty string, got an int"),
    (definition(tags=["a", "a"]), "tags[1]: duplicate 'a'"),
    (definition(owner=""), "owner: must not be empty"),
]


@pytest.mark.parametrize(("data", "expected"), WORKFLOW_CASES)
def test_workflow_rules(data: dict[str, Any], expected: str) -> None:
    found = issues(data)
    if not expected:
        assert found == []
        return
    assert any(line.startswith(expected) for line in found), found


def test_a_definition_must_be_a_map() -> None:
    assert issues("[1, 2]") == ["a definition must be a map with id and steps, got a list"]


def test_run_strategy_is_normalised() -> None:
    assert parse(definition(run_strategy="first_only")).run_strategy.max_concurrency == 1
    parallel = parse(definition(run_strategy={"type": "parallel"})).run_strategy
    assert (parallel.type, parallel.max_concurrency) == ("parallel", 20)
    assert (
        parse(
            definition(run_strategy={"type": "parallel", "max_concurrency": 0})
        ).run_strategy.max_concurrency
        == 0
    )


def test_durations_are_normalised_to_seconds() -> None:
    defn = parse(definition(timeout="1h30m"))
    assert defn.timeout == 5400.0
    assert parse(definition(timeout=90)).timeout == 90.0


# ---------------------------------------------------------------------------- params

PARAM_CASES: list[tuple[dict[str, Any], str]] = [
    ({"1x": 1}, "params.1x: param names are identifiers"),
    (
        {"x": {"type": "decimal"}},
        "params.x.type: must be one of string, int, float, bool, date, datetime, duration, list, map, secret, got 'decimal'",
    ),
    ({"x": {"type": "int", "default": 1, "expr": "2"}}, "params.x: give either default or expr, not both"),
    (
        {"x": {"type": "int", "default": 1, "required": True}},
        "params.x.required: a required param takes no default or expr",
    ),
    ({"x": {"type": "int", "mode": "fixed"}}, "params.x.mode: a fixed param needs a default or an expr"),
    (
        {"x": {"type": "int", "mode": "frozen", "default": 1}},
        "params.x.mode: must be one of overridable, fixed",
    ),
    (
        {"x": {"type": "date", "default": "2026-13-01"}},
        "params.x.default: expected a date (YYYY-MM-DD), got '2026-13-01'",
    ),
    ({"x": {"type": "int", "default": "seven"}}, "params.x.default: expected an int, got 'seven'"),
    (
        {"x": {"type": "string", "default": "c", "values": ["a", "b"]}},
        "params.x.default: 'c' is not one of the allowed values",
    ),
    ({"x": {"type": "int", "values": []}}, "params.x.values: must be a non-empty list of allowed values"),
    ({"x": {"type": "int", "values": [1, "two"]}}, "params.x.values[1]: expected an int, got 'two'"),
    ({"x": {"expr": "1"}}, "params.x.type: required"),
    ({"x": {"type": "int", "expr": "1 +"}}, "params.x.expr: unexpected end of expression at 1:4"),
    ({"x": {"type": "int", "expr": "params.y"}}, "params.x.expr: params.y is not a declared param"),
    (
        {"x": {"type": "int", "expr": "steps.a.outputs.n"}},
        "params.x.expr: steps.a.outputs.n: param expressions run at run start",
    ),
    (
        {"x": {"type": "int", "expr": "trigger.id"}},
        "params.x.expr: trigger.id: trigger.* is only available in trigger params",
    ),
    ({"x": {"type": "int", "expr": "params[params.k]"}, "k": "x"}, "params.x.expr: name params statically"),
    ({"x": {"type": "int", "expr": "params.x + 1"}}, "params.x.expr: cycle in param expressions: x -> x"),
    ({"x": {"type": "int", "default": 1, "bogus": 2}}, "params.x.bogus: unknown field"),
]


@pytest.mark.parametrize(("params", "expected"), PARAM_CASES)
def test_param_rules(params: dict[str, Any], expected: str) -> None:
    found = issues(definition(params=params))
    assert any(line.startswith(expected) for line in found), found


def test_param_cycles_name_the_whole_cycle() -> None:
    params = {
        "a": {"type": "int", "expr": "params.b + 1"},
        "b": {"type": "int", "expr": "params.c + 1"},
        "c": {"type": "int", "expr": "params.a + 1"},
        "d": {"type": "int", "expr": "params.a"},
    }
    assert (
        only_issue(definition(params=params)) == "params.a.expr: cycle in param expressions: a -> b -> c -> a"
    )


def test_param_shorthand_infers_the_type() -> None:
    defn = parse(
        definition(
            params={"retries": 3, "ratio": 0.5, "name": "x", "on": True, "regions": ["eu"], "m": {"k": 1}}
        )
    )
    assert {k: v.type for k, v in defn.params.items()} == {
        "retries": "int",
        "ratio": "float",
        "name": "string",
        "on": "bool",
        "regions": "list",
        "m": "map",
    }
    assert defn.params["retries"].default == 3


def test_param_defaults_are_stored_in_json_form() -> None:
    defn = parse(
        definition(
            params={
                "d": {"type": "date", "default": "2026-11-01"},
                "w": {"type": "duration", "default": "1h"},
            }
        )
    )
    assert defn.params["d"].default == "2026-11-01"
    assert defn.params["w"].default == 3600


# ---------------------------------------------------------------------------- triggers

TRIGGER_CASES: list[tuple[dict[str, Any], str]] = [
    ({"type": "timer"}, "triggers[0].type: must be one of cron, signal, got 'timer'"),
    ({"type": "cron"}, "triggers[0].cron: required"),
    ({"type": "cron", "cron": "61 * * * *"}, "triggers[0].cron: minute field: 61 is out of range 0-59"),
    ({"type": "cron", "cron": "* * * *"}, "triggers[0].cron: expected 5 fields"),
    ({"type": "cron", "cron": "0 0 31 2 *"}, "triggers[0].cron: day of month '31' never occurs in month '2'"),
    ({"type": "cron", "cron": "@often"}, "triggers[0].cron: unknown macro '@often'"),
    (
        {"type": "cron", "cron": "@daily", "timezone": "Mars/Olympus"},
        "triggers[0].timezone: unknown time zone 'Mars/Olympus'",
    ),
    ({"type": "cron", "cron": "@daily", "id": "Nightly"}, "triggers[0].id: must match"),
    (
        {"type": "cron", "cron": "@daily", "params": {"nope": 1}},
        "triggers[0].params.nope: not a declared param",
    ),
    (
        {"type": "cron", "cron": "@daily", "params": {"n": "${signals.x.y}"}},
        "triggers[0].params.n: signals.x.y: signals.* is only available",
    ),
    (
        {"type": "cron", "cron": "@daily", "params": {"n": "${params.n}"}},
        "triggers[0].params.n: params.n: trigger params are computed before the run exists",
    ),
    (
        {"type": "cron", "cron": "@daily", "params": {"n": "x"}},
        "triggers[0].params.n: expected an int, got 'x'",
    ),
    (
        {"type": "cron", "cron": "@daily", "catch_up": "some"},
        "triggers[0].catch_up: must be one of none, latest, all, got 'some'",
    ),
    (
        {"type": "cron", "cron": "@daily", "max_catch_up": 0},
        "triggers[0].max_catch_up: must be >= 1, got 0",
    ),
    (
        {"type": "cron", "cron": "@daily", "catch_up": "latest", "max_catch_up": 5},
        "triggers[0].max_catch_up: only applies to catch_up: all, not latest",
    ),
    (
        {"type": "cron", "cron": "@daily", "start": "soon"},
        "triggers[0].start: must be a date (YYYY-MM-DD) or an ISO 8601 datetime, got 'soon'",
    ),
    (
        {"type": "cron", "cron": "@daily", "end": 5},
        "triggers[0].end: must be a date (YYYY-MM-DD) or an ISO 8601 datetime, got an int",
    ),
    (
        {"type": "cron", "cron": "@daily", "start": "2026-03-01", "end": "2026-02-01"},
        "triggers[0].end: must be after start (2026-03-01T00:00:00+00:00), got 2026-02-01T00:00:00+00:00",
    ),
    ({"type": "cron", "cron": "@daily", "jitter": "-1s"}, "triggers[0].jitter: must be >= 0"),
    ({"type": "cron", "cron": "@daily", "jitter": "2h"}, "triggers[0].jitter: must be"),
    (
        {"type": "cron", "cron": "@daily", "catchup": "none"},
        "triggers[0].catchup: unknown field (did you mean 'catch_up'?)",
    ),
    ({"type": "signal"}, "triggers[0].signals: required"),
    ({"type": "signal", "signals": []}, "triggers[0].signals: must list at least one signal"),
    (
        {"type": "signal", "signals": [{"name": f"s{i}"} for i in range(9)], "join": ["k"]},
        "triggers[0].signals: at most 8 signals per trigger, got 9",
    ),
    (
        {"type": "signal", "signals": [{"name": "a"}, {"name": "a"}], "join": ["k"]},
        "triggers[0].signals[1].name: signal 'a' appears twice",
    ),
    (
        {"type": "signal", "signals": [{"name": "a"}, {"name": "b"}]},
        "triggers[0].join: required when a trigger has more than one signal",
    ),
    (
        {
            "type": "signal",
            "signals": [{"name": "a", "match": {"date": "x"}}, {"name": "b"}],
            "join": ["date"],
        },
        "triggers[0].signals[0].match.date: join key 'date' cannot also be a match predicate",
    ),
    (
        {"type": "signal", "signals": [{"name": "a", "match": {"rows": {"~": 1}}}]},
        "triggers[0].signals[0].match.rows: must be a value, or {op: value} with op one of",
    ),
    (
        {"type": "signal", "signals": [{"name": "a", "match": {"rows": {"in": 1}}}]},
        "triggers[0].signals[0].match.rows: 'in' takes a non-empty list",
    ),
    (
        {"type": "signal", "signals": [{"name": "a", "match": {"rows": {">": True}}}]},
        "triggers[0].signals[0].match.rows: '>' compares numbers or strings",
    ),
    (
        {"type": "signal", "signals": [{"name": "a", "match": {"d": "${params.d}"}}]},
        "triggers[0].signals[0].match.d: templates are not allowed in a trigger's match",
    ),
    (
        {"type": "signal", "signals": [{"name": "a", "when": "signals.a.rows > 1"}]},
        "triggers[0].signals[0].when: signals.a.rows: signals.* is only available",
    ),
    (
        {"type": "signal", "signals": [{"name": "a", "when": "signal.rows >"}]},
        "triggers[0].signals[0].when: unexpected end of expression",
    ),
    (
        {"type": "signal", "signals": [{"name": "bad name"}]},
        "triggers[0].signals[0].name: must match letters, digits, _ - and dots",
    ),
    (
        # The platform's own subjects (the scheduler's wait registrations) are no user's signal.
        {"type": "signal", "signals": [{"name": "_legato.wait"}]},
        "triggers[0].signals[0].name: must match letters, digits, _ - and dots, not starting with _legato, got '_legato.wait'",
    ),
    (
        {"type": "signal", "signals": [{"name": "a"}], "since": "yesterday"},
        "triggers[0].since: must be an ISO 8601 datetime, got 'yesterday'",
    ),
    ({"type": "signal", "signals": [{"name": "a"}], "expiry": "0s"}, "triggers[0].expiry: must be > 0"),
    (
        {"type": "signal", "signals": [{"name": "a"}], "params": {"n": "${signals.b.x}"}},
        "triggers[0].params.n: signals.b: not a signal available to trigger 'signal-0' (available: a)",
    ),
]


@pytest.mark.parametrize(("trigger", "expected"), TRIGGER_CASES)
def test_trigger_rules(trigger: dict[str, Any], expected: str) -> None:
    found = issues(definition(params={"n": {"type": "int"}, "d": {"type": "date"}}, triggers=[trigger]))
    assert any(line.startswith(expected) for line in found), found


def test_duplicate_trigger_ids() -> None:
    triggers = [{"type": "cron", "cron": "@daily", "id": "t"}, {"type": "cron", "cron": "@hourly", "id": "t"}]
    assert only_issue(definition(triggers=triggers)) == "triggers[1].id: duplicate trigger id 't'"


def test_trigger_defaults() -> None:
    defn = parse(
        definition(
            params={"d": {"type": "date"}},
            triggers=[
                {"type": "cron", "cron": "@daily"},
                {"type": "signal", "signals": [{"name": "x", "match": {"n": 1, "m": {">=": 2}}}]},
            ],
        )
    )
    cron, signal = defn.triggers
    assert (cron.id, cron.type, cron.timezone) == ("cron-0", "cron", "UTC")
    assert (signal.id, signal.type, signal.expiry) == ("signal-1", "signal", 7 * 86400.0)
    assert [(k, p.op, p.value) for k, p in signal.signals[0].match.items()] == [("n", "=", 1), ("m", ">=", 2)]


# ---------------------------------------------------------------------------- steps

STEP_CASES: list[tuple[dict[str, Any], str]] = [
    (
        {"id": "a"},
        "steps[0].type: required (one of noop, sleep, shell, python, http, sql, notebook, container, subworkflow, foreach, loop",
    ),
    (
        {"id": "a", "type": "bash"},
        "steps[0].type: must be one of the installed step types: noop, sleep, shell, python, http, sql, notebook, container,",
    ),
    (
        {"id": "a", "type": "sql", "connection": "wh"},
        "steps[0]: give exactly one of sql (with args) or statements",
    ),
    ({"id": "a", "type": "sql", "sql": "select 1"}, "steps[0].connection: required"),
    (
        {"id": "a", "type": "sql", "connection": "wh", "sql": "select '${params.x}'"},
        "steps[0].sql: must not contain ${...}: pass values in args and write $1, $2, ...",
    ),
    (
        {"id": "a", "type": "sql", "connection": "wh", "statements": [{"sql": "select 1", "arg": [1]}]},
        "steps[0].statements[0].arg: unknown field (did you mean 'args'?)",
    ),
    (
        {"id": "a", "type": "sql", "connection": "wh", "sql": "select 1", "result": "all"},
        "steps[0].result: must be one of none, first, rows, got 'all'",
    ),
    (
        {"id": "a", "type": "shell", "command": "x", "artifacts": ["../up"]},
        "steps[0].artifacts[0]: must match",
    ),
    ({"id": "a", "type": "container"}, "steps[0].image: required"),
    (
        {"id": "a", "type": "container", "image": "--privileged"},
        "steps[0].image: must match an image reference (name[:tag]), got '--privileged'",
    ),
    (
        {"id": "a", "type": "container", "image": "busybox", "command": "echo hi"},
        "steps[0].command: must be a list of strings (the argument list; no shell is run)",
    ),
    (
        {"id": "a", "type": "container", "image": "busybox", "command": ["echo", {"a": 1}]},
        "steps[0].command[1]: must be a string, got a map",
    ),
    (
        {"id": "a", "type": "container", "image": "busybox", "mounts": [{"source": "/d,rw", "target": "/d"}]},
        "steps[0].mounts[0].source: must match an absolute path without commas, got '/d,rw'",
    ),
    (
        {
            "id": "a",
            "type": "container",
            "image": "busybox",
            "mounts": [{"source": "/d/../etc", "target": "/d"}],
        },
        "steps[0].mounts[0].source: must not contain '..'",
    ),
    (
        {"id": "a", "type": "container", "image": "busybox", "mounts": [{"source": "/d"}]},
        "steps[0].mounts[0].target: required",
    ),
    (
        {
            "id": "a",
            "type": "container",
            "image": "busybox",
            "mounts": [{"source": "/d", "target": "/legato/work"}],
        },
        "steps[0].mounts[0].target: '/legato/work' is already mounted",
    ),
    (
        {"id": "a", "type": "container", "image": "busybox", "pull": "sometimes"},
        "steps[0].pull: must be one of missing, never, always, got 'sometimes'",
    ),
    (
        {"id": "a", "type": "container", "image": "busybox", "env": {"A": ["x"]}},
        "steps[0].env.A: must be a string, got a list",
    ),
    (
        {"id": "a", "type": "container", "image": "busybox", "imag": "x"},
        "steps[0].imag: unknown field (did you mean 'image'?)",
    ),
    ({"type": "noop"}, "steps[0].id: required"),
    ({"id": "A b", "type": "noop"}, "steps[0].id: must be lowercase letters, digits, _ and -"),
    ({"id": "a", "type": "noop", "commnd": "x"}, "steps[0].commnd: unknown field"),
    ({"id": "a", "type": "shell", "comand": "x"}, "steps[0].comand: unknown field (did you mean 'command'?)"),
    ({"id": "a", "type": "shell"}, "steps[0].command: required"),
    ({"id": "a", "type": "shell", "command": ""}, "steps[0].command: must not be empty"),
    (
        {"id": "a", "type": "shell", "command": "echo ${params.x +}"},
        "steps[0].command: unexpected end of expression",
    ),
    ({"id": "a", "type": "shell", "command": "echo ${params.x"}, "steps[0].command: unclosed ${ in template"),
    (
        {"id": "a", "type": "shell", "command": "x", "env": {"1A": "x"}},
        "steps[0].env.1A: must be a name matching",
    ),
    ({"id": "a", "type": "python", "function": "not a ref"}, "steps[0].function: must match module:function"),
    (
        {"id": "a", "type": "http", "url": "http://x", "method": "FETCH"},
        "steps[0].method: must be one of GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS",
    ),
    (
        {"id": "a", "type": "http", "url": "http://x", "success_status": [200, 700]},
        "steps[0].success_status[1]: must be an HTTP status 100..599, got 700",
    ),
    (
        {"id": "a", "type": "http", "url": "http://x", "headers": {"X": 1}},
        "steps[0].headers.X: must be a string, got an int",
    ),
    ({"id": "a", "type": "sleep", "duration": "forever"}, "steps[0].duration: invalid duration 'forever'"),
    ({"id": "a", "type": "sleep", "duration": -1}, "steps[0].duration: must be >= 0, got -1"),
    (
        {"id": "a", "type": "subworkflow", "subworkflow": {"workflow": "other", "version": 0}},
        "steps[0].subworkflow.version: must be a version number >= 1 or 'active', got 0",
    ),
    (
        {"id": "a", "type": "subworkflow", "subworkflow": {"workflow": "wf"}},
        "steps[0].subworkflow.workflow: a workflow cannot run itself as a subworkflow",
    ),
    ({"id": "a", "type": "subworkflow", "subworkflow": {}}, "steps[0].subworkflow.workflow: required"),
    (
        {"id": "a", "type": "foreach", "foreach": {"over": "range(3)"}},
        "steps[0].foreach: give exactly one of steps (a body) or subworkflow",
    ),
    (
        {"id": "a", "type": "foreach", "foreach": {"over": "range(3)", "concurrency": 0, "steps": [NOOP]}},
        "steps[0].foreach.concurrency: must be >= 1, got 0",
    ),
    (
        {
            "id": "a",
            "type": "foreach",
            "foreach": {"over": "range(3)", "concurrency": 10001, "steps": [NOOP]},
        },
        "steps[0].foreach.concurrency: must be <= 10000, got 10001",
    ),
    (
        {"id": "a", "type": "foreach", "foreach": {"over": "range(3)", "as": "index", "steps": [NOOP]}},
        "steps[0].foreach.as: 'index' is the iteration index",
    ),
    (
        {"id": "a", "type": "foreach", "foreach": {"over": "range(", "steps": [NOOP]}},
        "steps[0].foreach.over: '(' was never closed",
    ),
    ({"id": "a", "type": "foreach", "foreach": {"steps": [NOOP]}}, "steps[0].foreach.over: required"),
    (
        {"id": "a", "type": "foreach", "foreach": {"over": "range(3)", "steps": []}},
        "steps[0].foreach.steps: must have at least one step",
    ),
    (
        {
            "id": "a",
            "type": "foreach",
            "retry": {"error": 1},
            "foreach": {"over": "range(3)", "steps": [NOOP]},
        },
        "steps[0].retry: a foreach step has no retry of its own",
    ),
    (
        {"id": "a", "type": "loop", "loop": {"while": "true", "steps": [NOOP]}},
        "steps[0].loop.max_iterations: required",
    ),
    (
        {"id": "a", "type": "loop", "loop": {"while": "true", "max_iterations": 0, "steps": [NOOP]}},
        "steps[0].loop.max_iterations: must be >= 1, got 0",
    ),
    (
        {"id": "a", "type": "loop", "loop": {"while": "true", "max_iterations": 10001, "steps": [NOOP]}},
        "steps[0].loop.max_iterations: must be <= 10000, got 10001",
    ),
    (
        {"id": "a", "type": "loop", "loop": {"max_iterations": 2, "steps": [NOOP]}},
        "steps[0].loop.while: required",
    ),
    ({"id": "a", "type": "noop", "retry": {"error": 100}}, "steps[0].retry.error: must be <= 99, got 100"),
    ({"id": "a", "type": "noop", "retry": {"platform": -1}}, "steps[0].retry.platform: must be >= 0, got -1"),
    ({"id": "a", "type": "noop", "retry": {"attempts": 3}}, "steps[0].retry.attempts: unknown field"),
    (
        {"id": "a", "type": "noop", "retry": {"backoff": {"initial": "10s", "max": "1s"}}},
        "steps[0].retry.backoff.max: must be >= initial (10s), got 1s",
    ),
    (
        {"id": "a", "type": "noop", "retry": {"backoff": {"multiplier": 0.5}}},
        "steps[0].retry.backoff.multiplier: must be between 1 and 100, got 0.5",
    ),
    (
        {"id": "a", "type": "noop", "retry": {"backoff": {"type": "fixed", "max": "1m"}}},
        "steps[0].retry.backoff.max: unknown field",
    ),
    (
        {"id": "a", "type": "noop", "retry": {"backoff": {"type": "linear"}}},
        "steps[0].retry.backoff.type: must be one of exponential, fixed",
    ),
    ({"id": "a", "type": "noop", "timeout": "0s"}, "steps[0].timeout: must be > 0"),
    (
        {"id": "a", "type": "noop", "on_failure": "retry"},
        "steps[0].on_failure: must be one of fail, ignore, finish_others_then_fail",
    ),
    ({"id": "a", "type": "noop", "queue": "GPU pool"}, "steps[0].queue: must match"),
    (
        {"id": "a", "type": "noop", "concurrency_tags": ["ok", "Not OK"]},
        "steps[0].concurrency_tags[1]: must match",
    ),
    ({"id": "a", "type": "noop", "outputs": ["rows", "rows"]}, "steps[0].outputs[1]: duplicate 'rows'"),
    ({"id": "a", "type": "noop", "outputs": ["1rows"]}, "steps[0].outputs[0]: must match an identifier"),
    (
        {"id": "a", "type": "noop", "wait_for_signals": [{"match": {}}]},
        "steps[0].wait_for_signals[0].name: required",
    ),
    (
        {"id": "a", "type": "noop", "wait_for_signals": [{"name": "_legato.wait"}]},
        "steps[0].wait_for_signals[0].name: must match letters, digits, _ - and dots, not starting with _legato",
    ),
    (
        {"id": "a", "type": "noop", "publish_signals": [{"name": "_legato_x"}]},
        "steps[0].publish_signals[0].name: must match letters, digits, _ - and dots, not starting with _legato",
    ),
    (
        {"id": "a", "type": "noop", "publish_signals": [{"name": "s", "params": [1]}]},
        "steps[0].publish_signals[0].params: must be a map, got a list",
    ),
    (
        {"id": "a", "type": "noop", "params": {"bad-name": 1}},
        "steps[0].params.bad-name: must be a name matching",
    ),
    ({"id": "a", "type": "noop", "depends_on": ["ghost"]}, "steps[0].depends_on[0]: unknown step 'ghost'"),
    ({"id": "a", "type": "noop", "next": ["ghost"]}, "steps[0].next[0].step: unknown step 'ghost'"),
    ({"id": "a", "type": "noop", "next": [{"when": "true"}]}, "steps[0].next[0].step: required"),
]


@pytest.mark.parametrize(("step", "expected"), STEP_CASES)
def test_step_rules(step: dict[str, Any], expected: str) -> None:
    found = issues(steps(step))
    assert any(line.startswith(expected) for line in found), found


def test_the_issue_example_from_the_spec() -> None:
    data = steps(
        NOOP,
        {"id": "b", "type": "noop"},
        {"id": "c", "type": "noop"},
        {"id": "d", "type": "foreach", "foreach": {"over": "range(3)", "concurrency": 0, "steps": [NOOP]}},
    )
    assert only_issue(data) == "steps[3].foreach.concurrency: must be >= 1, got 0"


def test_body_rules_use_nested_paths() -> None:
    body = [{"id": "x", "type": "shell"}, {"id": "y", "type": "noop", "depends_on": ["ghost"]}]
    data = steps({"id": "f", "type": "foreach", "foreach": {"over": "range(2)", "steps": body}})
    assert issues(data) == [
        "steps[0].foreach.steps[0].command: required",
        "steps[0].foreach.steps[1].depends_on[0]: unknown step 'ghost'",
    ]


def test_all_issues_are_reported_at_once() -> None:
    data = {
        "id": "Bad",
        "criticality": "urgent",
        "params": {"x": {"type": "int", "default": "x"}},
        "steps": [
            {"id": "a", "type": "shell"},
            {"id": "b", "type": "noop", "depends_on": ["zz"], "timeout": "never"},
            {"id": "a", "type": "noop"},
        ],
    }
    found = issues(data)
    for expected in (
        "id: must match",
        "criticality: must be one of",
        "params.x.default: expected an int",
        "steps[0].command: required",
        "steps[1].timeout: invalid duration",
        "steps[2].id: duplicate step id 'a' (also steps[0])",
        "steps[1].depends_on[0]: unknown step 'zz'",
    ):
        assert any(line.startswith(expected) for line in found), (expected, found)


def test_step_shorthands_are_normalised() -> None:
    defn = parse(
        steps(
            {"id": "a", "type": "noop", "next": ["b", {"step": "c", "when": "true"}], "retry": 3},
            {"id": "b", "type": "sleep", "duration": "1m"},
            {"id": "c", "type": "http", "url": "http://x", "method": "post", "success_status": 204},
        )
    )
    a, b, c = defn.steps
    assert [(t.step, t.when) for t in a.next] == [("b", None), ("c", "true")]
    assert a.retry.error == 3 and a.retry.platform == 10
    assert b.duration == 60.0
    assert (c.method, c.success_status) == ("POST", [204])


def test_backoff_delays() -> None:
    defn = parse(
        steps(
            {
                "id": "a",
                "type": "noop",
                "retry": {"backoff": {"initial": "1s", "max": "10s", "multiplier": 3}},
            },
            {"id": "b", "type": "noop", "retry": {"backoff": {"type": "fixed", "initial": "30s"}}},
        )
    )
    exponential = defn.steps[0].retry.backoff
    assert [exponential.delay(n) for n in (1, 2, 3, 4, 99)] == [1.0, 3.0, 9.0, 10.0, 10.0]
    fixed = defn.steps[1].retry.backoff
    assert [fixed.delay(n) for n in (1, 5)] == [30.0, 30.0]
    default = parse(steps(NOOP)).steps[0].retry
    assert (default.error, default.platform, default.timeout) == (0, 10, 0)
    assert [default.backoff.delay(n) for n in (1, 2, 11)] == [1.0, 2.0, 600.0]


def test_cron_window_dates_are_midnight_in_the_trigger_zone() -> None:
    defn = parse(
        definition(
            triggers=[
                {
                    "type": "cron",
                    "cron": "@daily",
                    "timezone": "Europe/Paris",
                    "catch_up": "latest",
                    "start": "2026-03-29",
                    "end": "2026-11-01T12:00:00+00:00",
                    "jitter": "30s",
                }
            ]
        )
    )
    trig = defn.triggers[0]
    assert trig.catch_up == "latest"  # type: ignore[union-attr]
    assert trig.start.isoformat() == "2026-03-28T23:00:00+00:00"  # type: ignore[union-attr]
    assert trig.end.isoformat() == "2026-11-01T12:00:00+00:00"  # type: ignore[union-attr]
    assert trig.jitter == 30.0  # type: ignore[union-attr]
