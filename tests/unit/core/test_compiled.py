"""The compiled workflow's runtime API, as the scheduler, executor and signal router use it."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from legato.core import (
    CompiledWorkflow,
    EvalEnv,
    InstanceInfo,
    MatchPredicate,
    ParamError,
    compile_workflow,
    definition_from_json,
    definition_to_json,
    predicate_holds,
    signal_matches,
)
from legato.sel import DateRange, SelEvalError, SelLimitError
from tests.unit.core.builders import definition, parse

START = datetime(2026, 11, 8, 6, 0, tzinfo=UTC)
INSTANCE = InstanceInfo(id="run-1", workflow_id="wf", version=1, start_time=START, trigger={"kind": "api"})

WORKFLOW = definition(
    params={
        "start": {"type": "date", "default": "2026-11-01"},
        "days": 3,
        "limit": 10,
        "env": {"type": "string", "default": "prod"},
    },
    triggers=[
        {
            "type": "cron",
            "id": "nightly",
            "cron": "0 2 * * *",
            "timezone": "Europe/Paris",
            "params": {"start": "${date(trigger.fire_time, tz='Europe/Paris') - days(1)}"},
        },
        {
            "type": "signal",
            "id": "ready",
            "join": ["date"],
            "params": {"start": "${signals.orders.date}"},
            "signals": [
                {
                    "name": "orders",
                    "match": {"status": "done", "rows": {">": 0}},
                    "when": "signal.rows < 100",
                },
                {"name": "payments"},
            ],
        },
    ],
    steps=[
        {
            "id": "extract",
            "type": "shell",
            "outputs": ["rows"],
            "params": {"limit": "${params.limit * 2}", "table": "db.orders", "start": "${str(params.start)}"},
            "command": "echo ${params.table} ${params.limit} ${params.start} ${params.env}",
            "env": {"TABLE": "${params.table}", "FIXED": "x"},
            "retry": {"error": 2},
            "timeout": "10m",
            "queue": "etl",
            "concurrency_tags": ["warehouse"],
            "wait_for_signals": [
                {
                    "name": "table_ready",
                    "match": {
                        "table": "db.orders",
                        "date": "${params.start}",
                        "n": {">=": "${params.limit}"},
                    },
                }
            ],
            "publish_signals": [
                {
                    "name": "extracted",
                    "params": {"rows": "${steps.extract.outputs.rows}", "on": "${params.start}"},
                }
            ],
            "next": [
                {"step": "load", "when": "int(steps.extract.outputs.rows) > 0"},
                {"step": "alert", "when": "int(steps.extract.outputs.rows) == 0"},
            ],
        },
        {
            "id": "load",
            "type": "http",
            "url": "https://example.com/load/${params.start}?n=${steps.extract.outputs.rows}",
            "method": "POST",
            "headers": {"X-Env": "${params.env}"},
            "body": {"rows": "${steps.extract.outputs.rows}", "tags": ["a", "${params.env}"]},
        },
        {"id": "alert", "type": "python", "function": "ops.alerts:page"},
        {"id": "pause", "type": "sleep", "duration": "${minutes(params.days)}", "depends_on": ["load"]},
        {
            "id": "fan",
            "type": "foreach",
            "depends_on": ["pause"],
            "foreach": {
                "over": "date_range(params.start, params.start + days(params.days - 1))",
                "as": "day",
                "concurrency": 2,
                "steps": [{"id": "part", "type": "shell", "command": "echo ${params.day} ${params.index}"}],
            },
        },
        {
            "id": "child",
            "type": "subworkflow",
            "depends_on": ["fan"],
            "subworkflow": {"workflow": "child-wf", "version": 2, "params": {"day": "${params.start}"}},
        },
        {
            "id": "each",
            "type": "foreach",
            "depends_on": ["fan"],
            "foreach": {
                "over": "[{'n': 1}, {'n': 2}]",
                "subworkflow": {
                    "workflow": "child-wf",
                    "params": {"n": "${params.item.n}", "i": "${params.index}"},
                },
            },
        },
        {
            "id": "retry-loop",
            "type": "loop",
            "depends_on": ["child"],
            "loop": {
                "while": "iteration.index == 0 or iteration.outputs.probe.status != 'ok'",
                "max_iterations": 3,
                "steps": [{"id": "probe", "type": "noop", "outputs": ["status"]}],
            },
        },
    ],
)


@pytest.fixture(scope="module")
def wf() -> CompiledWorkflow:
    return compile_workflow(parse(WORKFLOW))


@pytest.fixture
def env(wf: CompiledWorkflow) -> EvalEnv:
    return EvalEnv(
        params=wf.resolve_run_params({}, instance=INSTANCE), instance=INSTANCE.namespace(), now=START
    )


def test_structure(wf: CompiledWorkflow) -> None:
    assert wf.roots == ["extract"]
    assert wf.topo_order == ["extract", "load", "alert", "pause", "fan", "child", "each", "retry-loop"]
    assert wf.step("load").type == "http"
    assert wf.step_path("fan") == "steps[4]"
    assert wf.trigger_ids() == ["nightly", "ready"]
    with pytest.raises(KeyError, match="no step 'ghost'"):
        wf.step("ghost")


def test_resolve_step_merges_step_params_over_run_params(wf: CompiledWorkflow, env: EvalEnv) -> None:
    resolved = wf.resolve_step("extract", env)
    assert resolved.params == {
        "start": date(2026, 11, 1),
        "days": 3,
        "limit": 20,
        "env": "prod",
        "table": "db.orders",
    }
    assert resolved.config == {
        "command": "echo db.orders 20 2026-11-01 prod",
        "env": {"TABLE": "db.orders", "FIXED": "x"},
    }
    assert (resolved.type, resolved.queue, resolved.timeout, resolved.retry.error) == (
        "shell",
        "etl",
        600.0,
        2,
    )
    assert (resolved.outputs, resolved.concurrency_tags) == (["rows"], ["warehouse"])


def test_step_params_are_coerced_to_declared_types(wf: CompiledWorkflow, env: EvalEnv) -> None:
    # "${str(params.start)}" renders text, but `start` is a declared date param
    assert wf.resolve_step("extract", env).params["start"] == date(2026, 11, 1)
    bad = compile_workflow(
        parse(definition(params={"n": 1}, steps=[{"id": "a", "type": "noop", "params": {"n": "many"}}]))
    )
    with pytest.raises(ParamError) as info:
        bad.resolve_step("a", EvalEnv(params={"n": 1}))
    assert [str(i) for i in info.value.issues] == ["steps[0].params.n: expected an int, got 'many'"]


def test_config_of_each_step_type(wf: CompiledWorkflow, env: EvalEnv) -> None:
    env.steps["extract"] = {"outputs": {"rows": "42"}, "status": "succeeded"}
    assert wf.resolve_step("load", env).config == {
        "url": "https://example.com/load/2026-11-01?n=42",
        "method": "POST",
        "headers": {"X-Env": "prod"},
        "body": {"rows": "42", "tags": ["a", "prod"]},
        "success_status": [],
    }
    assert wf.resolve_step("alert", env).config == {"function": "ops.alerts:page"}
    assert wf.resolve_step("pause", env).config == {"duration": 180.0}
    assert wf.resolve_step("child", env).config == {
        "workflow": "child-wf",
        "version": 2,
        "params": {"day": date(2026, 11, 1)},
        "apply_run_strategy": False,
    }
    assert wf.resolve_step("fan", env).config == {
        "as": "day",
        "concurrency": 2,
        "on_failure": "finish_others_then_fail",
    }
    assert wf.resolve_step("retry-loop", env).config == {"max_iterations": 3}


def test_expression_failures_carry_the_step_path(wf: CompiledWorkflow, env: EvalEnv) -> None:
    with pytest.raises(SelEvalError) as info:
        wf.resolve_step("load", env)  # steps.extract has no outputs yet
    assert str(info.value).startswith("steps[1].url: key 'extract' not found in steps")


def test_edges_follow_their_conditions(wf: CompiledWorkflow, env: EvalEnv) -> None:
    env.steps["extract"] = {"outputs": {"rows": "0"}, "status": "succeeded"}
    taken = {e.target: wf.edge_active(e, env) for e in wf.successors("extract")}
    assert taken == {"load": False, "alert": True}
    assert all(wf.edge_active(e, env) for e in wf.predecessors("pause"))  # no condition


def test_a_condition_must_be_a_bool() -> None:
    wf = compile_workflow(
        parse(
            definition(
                steps=[
                    {"id": "a", "type": "noop", "next": [{"step": "b", "when": "1"}]},
                    {"id": "b", "type": "noop"},
                ]
            )
        )
    )
    with pytest.raises(SelEvalError, match="a condition must be true or false, got int") as info:
        wf.edge_active(wf.successors("a")[0], EvalEnv())
    assert info.value.path == "steps[0].next[0].when"


def test_foreach_items_and_iteration_envs(wf: CompiledWorkflow, env: EvalEnv) -> None:
    items = wf.foreach_items("fan", env)
    assert isinstance(items, DateRange)
    assert list(items) == [date(2026, 11, 1), date(2026, 11, 2), date(2026, 11, 3)]
    body = wf.body("fan")
    iteration = wf.foreach_env("fan", env, 1, items[1])
    assert iteration.params["day"] == date(2026, 11, 2) and iteration.params["index"] == 1
    assert body.resolve_step("part", iteration).config["command"] == "echo 2026-11-02 1"
    assert env.params.get("day") is None  # the outer env is untouched


def test_foreach_over_a_subworkflow(wf: CompiledWorkflow, env: EvalEnv) -> None:
    items = wf.foreach_items("each", env)
    assert items == [{"n": 1}, {"n": 2}]
    child = wf.foreach_subworkflow("each", wf.foreach_env("each", env, 1, items[1]))
    assert child == {
        "workflow": "child-wf",
        "version": "active",
        "params": {"n": 2, "i": 1},
        "apply_run_strategy": False,
    }
    with pytest.raises(ValueError, match="has no body"):
        wf.body("each")


def foreach_over(over: str) -> CompiledWorkflow:
    body = [{"id": "x", "type": "noop"}]
    return compile_workflow(
        parse(definition(steps=[{"id": "f", "type": "foreach", "foreach": {"over": over, "steps": body}}]))
    )


@pytest.mark.parametrize(
    ("over", "check"),
    [
        ("range(100000)", lambda items: isinstance(items, range) and len(items) == 100_000),
        ("range(1000000)", lambda items: len(items) == 1_000_000),
        ("{3, 1, 2}", lambda items: items == [1, 2, 3]),
        ("[{'a': 1}, {'a': 2}]", lambda items: items == [{"a": 1}, {"a": 2}]),
    ],
)
def test_foreach_sequences_stay_lazy_and_bounded(over: str, check: Any) -> None:
    wf = foreach_over(over)
    assert check(wf.foreach_items("f", EvalEnv()))


@pytest.mark.parametrize(
    ("over", "error", "message"),
    [
        ("range(1000001)", SelLimitError, "foreach over 1000001 items exceeds the limit of 1000000"),
        ("range(10**30)", SelLimitError, "exceeds the limit of 1000000"),
        ("{'a': 1}", SelEvalError, "foreach over needs a list, range or date range, got map"),
        ("'abc'", SelEvalError, "got string"),
        ("list(range(200000))", SelLimitError, "collection of 200000 items exceeds the limit of 100000"),
    ],
)
def test_foreach_rejects_what_cannot_be_iterated(over: str, error: type[Exception], message: str) -> None:
    wf = foreach_over(over)
    with pytest.raises(error, match=message) as info:
        wf.foreach_items("f", EvalEnv())
    assert str(info.value).startswith("steps[0].foreach.over: ")


def test_loops_stop_on_their_condition_or_their_bound(wf: CompiledWorkflow, env: EvalEnv) -> None:
    assert wf.loop_should_continue("retry-loop", env)  # first check: iteration.index == 0
    pending = wf.loop_env("retry-loop", env, 1, {"probe": {"status": "pending"}})
    assert wf.loop_should_continue("retry-loop", pending)
    done = wf.loop_env("retry-loop", env, 2, {"probe": {"status": "ok"}})
    assert not wf.loop_should_continue("retry-loop", done)
    exhausted = wf.loop_env("retry-loop", env, 3, {"probe": {"status": "pending"}})
    assert not wf.loop_should_continue("retry-loop", exhausted)  # max_iterations 3
    assert wf.body("retry-loop").topo_order == ["probe"]
    with pytest.raises(ValueError, match="not a loop step"):
        wf.loop_should_continue("extract", env)


def test_trigger_params(wf: CompiledWorkflow) -> None:
    fire = datetime(2026, 11, 8, 1, 0, tzinfo=UTC)  # 02:00 in Paris
    assert wf.trigger_params("nightly", fire_time=fire) == {"start": date(2026, 11, 7)}
    signals = {"orders": {"date": "2026-11-05", "rows": 3}, "payments": {"date": "2026-11-05"}}
    assert wf.trigger_params("ready", signals=signals) == {"start": date(2026, 11, 5)}
    with pytest.raises(ParamError) as info:
        wf.trigger_params("ready", signals={"orders": {"date": "someday"}})
    assert [str(i) for i in info.value.issues] == [
        "triggers[1].params.start: expected a date (YYYY-MM-DD), got 'someday'"
    ]
    with pytest.raises(KeyError):
        wf.trigger_params("nope")
    assert wf.schedule("nightly").next_after(fire) == datetime(2026, 11, 9, 1, 0, tzinfo=UTC)


def test_signal_legs_apply_match_and_when(wf: CompiledWorkflow) -> None:
    assert wf.signal_leg_accepts("ready", "orders", {"status": "done", "rows": 5, "date": "x"})
    assert not wf.signal_leg_accepts("ready", "orders", {"status": "done", "rows": 500})  # when: rows < 100
    assert not wf.signal_leg_accepts("ready", "orders", {"status": "done", "rows": 0})  # match rows > 0
    assert not wf.signal_leg_accepts("ready", "orders", {"status": "done"})  # missing field
    assert wf.signal_leg_accepts("ready", "payments", {})


@pytest.mark.parametrize(
    ("op", "expected", "value", "holds"),
    [
        ("=", "done", "done", True),
        ("=", 1, "1", False),  # types never mix
        ("!=", "done", "failed", True),
        (">", 0, 5, True),
        (">", 0, True, False),
        ("<=", "b", "a", True),
        (">=", 10, "11", False),
        ("in", ["a", "b"], "b", True),
        ("in", ["a", "b"], "c", False),
        ("=", None, None, True),
    ],
)
def test_match_predicates(op: str, expected: Any, value: Any, holds: bool) -> None:
    assert predicate_holds(MatchPredicate(op=op, value=expected), value) is holds  # type: ignore[arg-type]


def test_signal_matches_needs_every_field() -> None:
    match = {"a": MatchPredicate(value=1), "b": MatchPredicate(op=">", value=2)}
    assert signal_matches(match, {"a": 1, "b": 3})
    assert not signal_matches(match, {"a": 1})


def test_signal_waits_and_published_signals(wf: CompiledWorkflow, env: EvalEnv) -> None:
    [wait] = wf.resolve_signal_waits("extract", env)
    assert wait.name == "table_ready"
    assert wait.match == {
        "table": MatchPredicate(op="=", value="db.orders"),
        "date": MatchPredicate(op="=", value="2026-11-01"),
        "n": MatchPredicate(op=">=", value=10),
    }
    env.steps["extract"] = {"outputs": {"rows": "7"}, "status": "succeeded"}
    [published] = wf.resolve_published_signals("extract", env)
    assert (published.name, published.params) == ("extracted", {"rows": "7", "on": "2026-11-01"})


def test_compiling_from_stored_json_gives_the_same_behaviour(wf: CompiledWorkflow, env: EvalEnv) -> None:
    stored = definition_from_json(definition_to_json(wf.definition))
    again = compile_workflow(stored)
    assert again.topo_order == wf.topo_order
    assert again.resolve_step("extract", env) == wf.resolve_step("extract", env)
