"""validate_text and the dry-run plan."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from legato.core.plan import RUNS, RUNTIME, SKIPPED, plan_workflow, validate_text
from tests.unit.core.builders import definition, parse, text

NOW = datetime(2026, 11, 8, 12, 0, tzinfo=UTC)

WORKFLOW = definition(
    params={
        "mode": {"type": "string", "default": "full", "values": ["full", "quick"]},
        "days": 3,
        "start": {"type": "date", "default": "2026-11-01"},
        "target": {"type": "string", "required": True},
    },
    triggers=[{"type": "cron", "id": "nightly", "cron": "0 2 * * *", "timezone": "Europe/Paris"}],
    steps=[
        {
            "id": "extract",
            "type": "shell",
            "command": "echo ${params.target}",
            "outputs": ["rows"],
            "timeout": "5m",
            "retry": {"error": 2, "backoff": {"initial": "2s", "max": "1m"}},
            "next": [
                {"step": "full", "when": "params.mode == 'full'"},
                {"step": "quick", "when": "params.mode == 'quick'"},
                {"step": "load", "when": "int(steps.extract.outputs.rows) > 0"},
            ],
        },
        {"id": "full", "type": "noop"},
        {"id": "quick", "type": "noop"},
        {"id": "after-quick", "type": "noop", "depends_on": ["quick"]},
        {"id": "load", "type": "shell", "command": "echo ${steps.extract.outputs.rows}"},
        {
            "id": "fan",
            "type": "foreach",
            "depends_on": ["full"],
            "foreach": {
                "over": "date_range(params.start, params.start + days(params.days - 1))",
                "as": "day",
                "concurrency": 2,
                "steps": [
                    {"id": "part", "type": "shell", "command": "echo ${params.day} for ${params.target}"}
                ],
            },
        },
        {
            "id": "child",
            "type": "subworkflow",
            "depends_on": ["full"],
            "subworkflow": {"workflow": "child-wf", "params": {"target": "${params.target}"}},
        },
        {
            "id": "repeat",
            "type": "loop",
            "depends_on": ["full"],
            "loop": {
                "while": "iteration.index < 2",
                "max_iterations": 4,
                "steps": [{"id": "tick", "type": "sleep", "duration": "1s"}],
            },
        },
    ],
)


def plan(params: dict[str, str]) -> dict[str, Any]:
    return plan_workflow(parse(WORKFLOW), params, now=NOW).to_json()


def by_id(steps: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in steps}


def test_branches_decided_by_params_and_the_rest_at_run_time() -> None:
    steps = by_id(plan({"target": "db"})["steps"])
    assert {k: v["status"] for k, v in steps.items()} == {
        "extract": RUNS,
        "full": RUNS,
        "quick": SKIPPED,
        "after-quick": SKIPPED,
        "load": RUNTIME,
        "fan": RUNS,
        "child": RUNS,
        "repeat": RUNS,
    }
    quick = by_id(plan({"target": "db", "mode": "quick"})["steps"])
    assert (quick["full"]["status"], quick["quick"]["status"], quick["fan"]["status"]) == (
        SKIPPED,
        RUNS,
        SKIPPED,
    )


def test_values_known_from_params_are_evaluated() -> None:
    data = plan({"target": "db", "days": "2"})
    steps = by_id(data["steps"])
    assert steps["extract"]["config"]["command"] == {"value": "echo db"}
    assert steps["load"]["config"]["command"]["status"] == RUNTIME
    fan = steps["fan"]["foreach"]
    assert (fan["iterations"], fan["first_items"], fan["concurrency"]) == (2, ["2026-11-01", "2026-11-02"], 2)
    [part] = fan["body"]
    assert part["config"]["command"]["status"] == RUNTIME  # depends on the item
    assert steps["child"]["config"]["params"] == {"value": {"target": "db"}}
    assert steps["repeat"]["loop"]["max_iterations"] == 4
    assert steps["extract"]["retry"]["error"] == 2 and steps["extract"]["timeout"] == 300.0
    assert [p["value"] for p in data["params"]] == ["full", 2, "2026-11-01", "db"]
    assert data["triggers"][0]["next_fires"][0] == "2026-11-09T01:00:00+00:00"


def test_param_errors_are_reported_and_param_dependent_parts_are_unknown() -> None:
    result = plan_workflow(parse(WORKFLOW), {"mode": "slow"}, now=NOW)
    data = result.to_json()
    assert not result.ok
    assert data["param_errors"] == [
        {"path": "params.mode", "message": "must be one of full, quick, got 'slow'"},
        {"path": "params.target", "message": "required: the run must supply a value"},
    ]
    assert by_id(data["steps"])["full"]["status"].startswith("unknown")


def test_the_plan_is_json_and_text() -> None:
    result = plan_workflow(parse(WORKFLOW), {"target": "db"}, now=NOW)
    assert json.loads(json.dumps(result.to_json())) == result.to_json()
    rendered = result.to_text()
    for fragment in (
        "Plan for workflow wf at 2026-11-08T12:00:00+00:00",
        "target  string    db  (supplied)",
        "nightly: cron '0 2 * * *' in Europe/Paris; next: 2026-11-09T01:00:00+00:00",
        "quick [noop]: skipped (no incoming edge is taken)",
        "when from extract: params.mode == 'quick'  -> not taken",
        "load [shell]: decided at run time",
        "3 iterations over date_range(params.start, params.start + days(params.days - 1)) (2026-11-01, 2026-11-02, 2026-11-03), 2 at a time",
        "timeout 5m; retries: error 2, platform 10, timeout 0 (exponential 2s..1m x2)",
        "repeats while iteration.index < 2 (at most 4 iterations)",
    ):
        assert fragment in rendered, fragment


def test_validate_text_lists_every_issue_or_nothing() -> None:
    assert validate_text(text(WORKFLOW), "wf.json") == []
    found = validate_text(
        "id: wf\nsteps:\n  - {id: a, type: shell}\n  - {id: b, type: noop, depends_on: [x]}\n", "wf.yaml"
    )
    assert [str(i) for i in found] == [
        "steps[0].command: required",
        "steps[1].depends_on[0]: unknown step 'x'",
    ]
    [syntax] = validate_text("id: [", "bad.yaml")
    assert str(syntax).startswith("bad.yaml: line 2, column 1: invalid YAML")
