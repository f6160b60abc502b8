"""Property tests: whatever a definition holds, validation answers with DefinitionError issues, never a crash."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from legato.core import (
    DefinitionError,
    compile_workflow,
    definition_from_json,
    definition_to_json,
    parse_definition,
)

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEYS = [
    "id", "type", "steps", "params", "triggers", "depends_on", "next", "when", "step", "retry", "error",
    "backoff", "initial", "max", "multiplier", "timeout", "foreach", "over", "as", "concurrency", "loop",
    "while", "max_iterations", "command", "duration", "url", "subworkflow", "workflow", "version", "match",
    "signals", "name", "join", "cron", "timezone", "default", "expr", "required", "values", "mode",
    "outputs", "on_failure", "run_strategy", "max_concurrency", "wait_for_signals", "publish_signals",
]  # fmt: skip
WORDS = ["a", "b", "noop", "shell", "sleep", "foreach", "loop", "cron", "signal", "int", "date", "list",
         "${params.x}", "${steps.a.outputs.n}", "params.x > 1", "range(3)", "1h", "0 2 * * *", "UTC",
         "parallel", "fail", "=", ">", "in"]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**6),
    st.floats(allow_nan=False),
    st.sampled_from(WORDS),
    st.text(max_size=5),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.sampled_from(KEYS), children, max_size=5)
    ),
    max_leaves=25,
)
step = st.fixed_dictionaries(
    {
        "id": st.sampled_from(["a", "b", "c"]),
        "type": st.sampled_from(["noop", "shell", "sleep", "foreach", "loop"]),
    },
    optional={
        k: values for k in ("depends_on", "next", "retry", "params", "command", "foreach", "loop", "duration")
    },
)
definitions = st.fixed_dictionaries(
    {"id": st.just("wf"), "steps": st.lists(step, max_size=4)},
    optional={"params": values, "triggers": values, "run_strategy": values, "timeout": values},
)


@SETTINGS
@given(definitions)
def test_random_definitions_give_issues_or_a_definition(data: dict[str, Any]) -> None:
    try:
        defn = parse_definition(json.dumps(data))
    except DefinitionError as exc:
        assert exc.errors and all(issue.message for issue in exc.errors)
        return
    again = definition_from_json(definition_to_json(defn))
    assert again == defn
    compile_workflow(again)


@SETTINGS
@given(values)
def test_random_documents_give_issues(data: Any) -> None:
    try:
        parse_definition(json.dumps(data))
    except DefinitionError as exc:
        assert exc.errors


@SETTINGS
@given(st.text(max_size=200))
def test_random_text_gives_issues(text: str) -> None:
    try:
        parse_definition(text)
    except DefinitionError as exc:
        assert exc.errors


@st.composite
def dags(draw: st.DrawFn) -> dict[str, Any]:
    count = draw(st.integers(1, 12))
    ids = [f"s{i}" for i in range(count)]
    steps = []
    for i, sid in enumerate(ids):
        earlier = ids[:i]
        step: dict[str, Any] = {"id": sid, "type": "noop", "outputs": ["n"]}
        deps = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3)) if earlier else []
        if deps:
            step["depends_on"] = deps
        later = ids[i + 1 :]
        nexts = draw(st.lists(st.sampled_from(later), unique=True, max_size=2)) if later else []
        if nexts:
            step["next"] = [{"step": t, "when": f"steps.{sid}.outputs.n > params.k"} for t in nexts]
        steps.append(step)
    order = draw(st.permutations(steps))  # definition order does not matter to validity
    return {"id": "dag", "params": {"k": 1}, "steps": list(order)}


@SETTINGS
@given(dags())
def test_random_dags_validate_and_order_respects_every_edge(data: dict[str, Any]) -> None:
    compiled = compile_workflow(parse_definition(json.dumps(data)))
    position = {sid: i for i, sid in enumerate(compiled.topo_order)}
    assert sorted(position) == sorted(s["id"] for s in data["steps"])
    for sid in compiled.topo_order:
        for edge in compiled.predecessors(sid):
            assert position[edge.source] < position[sid]
            assert edge.source in compiled.upstream(sid)
    assert compiled.roots == [sid for sid in compiled.topo_order if not compiled.predecessors(sid)]


@SETTINGS
@given(dags(), st.data())
def test_adding_a_back_edge_is_reported_as_a_cycle(data: dict[str, Any], draw: st.DataObject) -> None:
    compiled = compile_workflow(parse_definition(json.dumps(data)))
    with_preds = [sid for sid in compiled.topo_order if compiled.upstream(sid)]
    if not with_preds:
        return
    target = draw.draw(st.sampled_from(with_preds))
    ancestor = draw.draw(st.sampled_from(compiled.upstream(target)))
    for step in data["steps"]:
        if step["id"] == ancestor:
            step["depends_on"] = [*step.get("depends_on", []), target]
    try:
        parse_definition(json.dumps(data))
    except DefinitionError as exc:
        assert any("dependency cycle" in issue.message for issue in exc.errors)
    else:
        raise AssertionError("a cycle was accepted")
