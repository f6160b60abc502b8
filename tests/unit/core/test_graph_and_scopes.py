"""The step graph (edges, cycles, order) and what each expression may refer to."""

from __future__ import annotations

from typing import Any

import pytest

from legato.core import compile_workflow
from tests.unit.core.builders import definition, issues, only_issue, parse


def shell(step_id: str, command: str = "echo ok", **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "type": "shell", "command": command, **extra}


def noop(step_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "type": "noop", **extra}


def test_edges_come_from_depends_on_and_next() -> None:
    defn = parse(
        definition(
            steps=[
                noop("a", next=[{"step": "c", "when": "params.go"}]),
                noop("b"),
                noop("c", depends_on=["b"]),
                noop("d", depends_on=["a"], next=["e"]),
                noop("e"),
            ],
            params={"go": True},
        )
    )
    compiled = compile_workflow(defn)
    assert compiled.roots == ["a", "b"]
    assert compiled.topo_order == ["a", "b", "c", "d", "e"]
    assert [(e.source, e.when.source if e.when else None) for e in compiled.predecessors("c")] == [
        ("a", "params.go"),
        ("b", None),
    ]
    assert [e.target for e in compiled.successors("a")] == ["c", "d"]
    assert compiled.upstream("e") == ["a", "d"]


def test_a_next_entry_adds_its_condition_to_a_depends_on_edge() -> None:
    defn = parse(
        definition(steps=[noop("a", next=[{"step": "b", "when": "true"}]), noop("b", depends_on=["a"])])
    )
    edges = compile_workflow(defn).predecessors("b")
    assert len(edges) == 1 and edges[0].when is not None


def test_topological_order_keeps_definition_order_between_independent_steps() -> None:
    defn = parse(
        definition(steps=[noop("z", depends_on=["y"]), noop("y"), noop("x"), noop("w", depends_on=["x"])])
    )
    assert compile_workflow(defn).topo_order == ["y", "z", "x", "w"]


@pytest.mark.parametrize(
    ("step_list", "expected"),
    [
        ([noop("a", depends_on=["a"])], ["steps[0]: dependency cycle: a -> a"]),
        (
            [
                noop("a", depends_on=["c"]),
                noop("b", depends_on=["a"]),
                noop("c", depends_on=["b"]),
                noop("r"),
            ],
            ["steps[0]: dependency cycle: a -> b -> c -> a"],
        ),
        (
            [noop("a", next=["b"]), noop("b", next=["a"]), noop("d", depends_on=["b"]), noop("r")],
            [
                "steps[0]: dependency cycle: a -> b -> a",
                "steps[2]: step 'd' is unreachable from any root step: it depends on a dependency cycle",
            ],
        ),
        (
            [noop("a", next=["b"]), noop("b", next=["a"]), noop("c", next=["d"]), noop("d", next=["c"])],
            ["steps[0]: dependency cycle: a -> b -> a", "steps[2]: dependency cycle: c -> d -> c"],
        ),
    ],
)
def test_cycles_are_reported_with_their_path(step_list: list[dict[str, Any]], expected: list[str]) -> None:
    found = [line.split(" (the graph must be acyclic")[0] for line in issues(definition(steps=step_list))]
    assert found == expected


def test_duplicate_successor_and_duplicate_ids() -> None:
    assert only_issue(definition(steps=[noop("a", next=["b", "b"]), noop("b")])) == (
        "steps[0].next[1]: step 'b' is listed twice in next"
    )
    assert (
        only_issue(definition(steps=[noop("a"), noop("a")]))
        == "steps[1].id: duplicate step id 'a' (also steps[0])"
    )


def test_bodies_have_their_own_graph_and_may_reuse_ids() -> None:
    body = [noop("a"), noop("b", depends_on=["a"])]
    defn = parse(
        definition(
            steps=[
                noop("a"),
                {
                    "id": "f",
                    "type": "foreach",
                    "depends_on": ["a"],
                    "foreach": {"over": "[1]", "steps": body},
                },
            ]
        )
    )
    compiled = compile_workflow(defn)
    assert compiled.body("f").topo_order == ["a", "b"]
    assert compiled.body("f").path == "steps[1].foreach.steps"
    with pytest.raises(ValueError, match="no body"):
        compiled.body("a")


def test_a_body_cannot_depend_on_outer_steps_by_edges() -> None:
    body = [noop("x", depends_on=["a"])]
    data = definition(
        steps=[noop("a"), {"id": "f", "type": "foreach", "foreach": {"over": "[1]", "steps": body}}]
    )
    assert only_issue(data) == "steps[1].foreach.steps[0].depends_on[0]: unknown step 'a'"


# ---------------------------------------------------------------------------- references

PARAMS = {"n": 1, "flag": True}


def scoped(step_list: list[dict[str, Any]], **extra: Any) -> list[str]:
    return issues(definition(params=PARAMS, steps=step_list, **extra))


@pytest.mark.parametrize(
    ("step_list", "expected"),
    [
        ([shell("a", "echo ${params.nope}")], "steps[0].command: params.nope is not a declared param"),
        (
            [shell("a", "echo ${params.nn}")],
            "steps[0].command: params.nn is not a declared param (did you mean 'n'?)",
        ),
        (
            [shell("a", "echo ${steps.b.outputs.x}"), noop("b", depends_on=["a"])],
            "steps[0].command: steps.b is not upstream of step 'a'",
        ),
        ([shell("a", "echo ${steps.zz.outputs.x}")], "steps[0].command: steps.zz: no such step"),
        ([noop("a"), shell("b", "${steps.a.outputs.x}", depends_on=["a"])], ""),
        (
            [noop("a", outputs=["rows"]), shell("b", "${steps.a.outputs.x}", depends_on=["a"])],
            "steps[1].command: steps.a.outputs.x: step 'a' declares outputs rows",
        ),
        (
            [noop("a"), shell("b", "${steps.a.result}", depends_on=["a"])],
            "steps[1].command: steps.a.result: a step exposes only outputs and status",
        ),
        ([noop("a"), shell("b", "${steps.a.status}", depends_on=["a"])], ""),
        (
            [shell("a", "${signals.s.x}")],
            "steps[0].command: signals.s: not a signal available to step 'a' (available: none)",
        ),
        ([shell("a", "${signals.s.x}", wait_for_signals=[{"name": "s"}])], ""),
        (
            [shell("a", "${trigger.id}")],
            "steps[0].command: trigger.id: trigger.* is only available in trigger params",
        ),
        (
            [shell("a", "${iteration.index}")],
            "steps[0].command: iteration.index: iteration.* is only available in a loop step's while and body",
        ),
        ([shell("a", "${instance.start_time}")], ""),
        (
            [shell("a", "${instance.owner}")],
            "steps[0].command: instance.owner: unknown field (instance has id, workflow_id, version, start_time, trigger, run_number)",
        ),
        ([shell("a", "${params.item}")], "steps[0].command: params.item is not a declared param"),
        ([shell("a", "${params.local}", params={"local": 1})], ""),
        (
            [noop("a", params={"x": "${params.local}", "local": 1})],
            "steps[0].params.x: params.local is not a declared param",
        ),
        (
            [noop("a", next=[{"step": "b", "when": "steps.b.outputs.ok"}]), noop("b")],
            "steps[0].next[0].when: steps.b is not upstream of the edge a -> b",
        ),
        ([noop("a", outputs=["ok"], next=[{"step": "b", "when": "steps.a.outputs.ok"}]), noop("b")], ""),
        (
            [noop("a", next=[{"step": "b", "when": "steps.a.outputs."}]), noop("b")],
            "steps[0].next[0].when: unexpected end of expression at 1:17",
        ),
        (
            [
                noop(
                    "a",
                    outputs=["rows"],
                    publish_signals=[{"name": "s", "params": {"r": "${steps.a.outputs.rows}"}}],
                )
            ],
            "",
        ),
        ([noop("a", wait_for_signals=[{"name": "s", "match": {"d": "${params.n}"}}])], ""),
        (
            [noop("a", wait_for_signals=[{"name": "s", "match": {"d": "${params.zz}"}}])],
            "steps[0].wait_for_signals[0].match.d: params.zz is not a declared param",
        ),
        ([noop("a", params={"p": {"expr": "params.n + 1"}})], ""),
        (
            [noop("a", params={"p": {"expr": "params.n +"}})],
            "steps[0].params.p.expr: unexpected end of expression",
        ),
        (
            [{"id": "h", "type": "http", "url": "http://x/${params.zz}"}],
            "steps[0].url: params.zz is not a declared param",
        ),
        (
            [{"id": "h", "type": "http", "url": "http://x", "body": {"k": ["${params.zz}"]}}],
            "steps[0].body.k[0]: params.zz is not a declared param",
        ),
        (
            [{"id": "s", "type": "sleep", "duration": "${params.zz}"}],
            "steps[0].duration: params.zz is not a declared param",
        ),
        (
            [
                {
                    "id": "s",
                    "type": "subworkflow",
                    "subworkflow": {"workflow": "child", "params": {"x": "${params.zz}"}},
                }
            ],
            "steps[0].subworkflow.params.x: params.zz is not a declared param",
        ),
    ],
)
def test_step_references(step_list: list[dict[str, Any]], expected: str) -> None:
    found = scoped(step_list)
    if not expected:
        assert found == []
    else:
        assert any(line.startswith(expected) for line in found), found


def foreach(step_id: str, body: list[dict[str, Any]], over: str = "range(3)", **spec: Any) -> dict[str, Any]:
    return {"id": step_id, "type": "foreach", "foreach": {"over": over, "steps": body, **spec}}


def loop(step_id: str, body: list[dict[str, Any]], condition: str = "iteration.index < 2") -> dict[str, Any]:
    return {"id": step_id, "type": "loop", "loop": {"while": condition, "max_iterations": 5, "steps": body}}


@pytest.mark.parametrize(
    ("step_list", "expected"),
    [
        ([foreach("f", [shell("x", "echo ${params.item} ${params.index} ${params.n}")])], ""),
        ([foreach("f", [shell("x", "echo ${params.day}")], **{"as": "day"})], ""),
        (
            [foreach("f", [shell("x", "echo ${params.item}")], **{"as": "day"})],
            "steps[0].foreach.steps[0].command: params.item is not a declared param (foreach adds day, index)",
        ),
        (
            [foreach("f", [noop("x")], **{"as": "n"})],
            "steps[0].foreach.as: 'n' shadows the workflow param params.n",
        ),
        (
            [foreach("f", [foreach("g", [noop("y")])])],
            "steps[0].foreach.steps[0].foreach.as: 'item' shadows an enclosing foreach's variable params.item",
        ),
        (
            [foreach("f", [noop("x")], over="params.item")],
            "steps[0].foreach.over: params.item is not a declared param",
        ),
        (
            [
                noop("a", outputs=["days"]),
                foreach("f", [noop("x")], over="steps.a.outputs.days", depends_on=["a"]),
            ],
            "steps[1]",
        ),
        (
            [
                noop("a", outputs=["v"]),
                {**foreach("f", [shell("x", "${steps.a.outputs.v}")]), "depends_on": ["a"]},
            ],
            "",
        ),
        (
            [noop("a", outputs=["v"]), foreach("f", [shell("x", "${steps.a.outputs.v}")])],
            "steps[1].foreach.steps[0].command: steps.a is not upstream of step 'x'",
        ),
        (
            [foreach("f", [noop("a", outputs=["v"]), shell("b", "${steps.a.outputs.v}", depends_on=["a"])])],
            "",
        ),
        ([loop("l", [shell("c", "echo ${iteration.index} ${iteration.outputs.c.x}")])], ""),
        ([loop("l", [noop("c")], condition="iteration.outputs.c.status == 'ok'")], ""),
        (
            [loop("l", [noop("c")], condition="iteration.outputs.zz.status == 'ok'")],
            "steps[0].loop.while: iteration.outputs.zz: 'zz' is not a step of this loop's body",
        ),
        (
            [loop("l", [noop("c")], condition="iteration.count > 1")],
            "steps[0].loop.while: iteration.count: unknown field (iteration has index, outputs)",
        ),
        (
            [loop("l", [noop("c")], condition="steps.c.status == 'ok'")],
            "steps[0].loop.while: steps.c is not upstream of step 'l'",
        ),
        (
            [loop("l", [noop("c")]), shell("after", "${iteration.index}", depends_on=["l"])],
            "steps[1].command: iteration.index: iteration.* is only available",
        ),
    ],
)
def test_body_references(step_list: list[dict[str, Any]], expected: str) -> None:
    found = scoped(step_list)
    if not expected:
        assert found == []
    else:
        assert any(line.startswith(expected) for line in found), found


def test_foreach_over_a_param_named_index_is_flagged() -> None:
    found = issues(definition(params={"index": 1}, steps=[foreach("f", [noop("x")])]))
    assert found == [
        "steps[0].foreach: the workflow param params.index is hidden by the iteration index in this body"
    ]


def test_signal_trigger_params_see_their_legs_and_param_expressions_see_all_legs() -> None:
    data = definition(
        params={
            "d": {"type": "date"},
            "rows": {"type": "int", "expr": "get(get(signals, 'a', {}), 'rows', 0)"},
        },
        triggers=[{"type": "signal", "signals": [{"name": "a"}], "params": {"d": "${signals.a.date}"}}],
    )
    assert issues(data) == []
