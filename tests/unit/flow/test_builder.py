"""Each builder helper gives exactly the definition its YAML gives, and bad input fails naming what and where."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import pytest
import yaml

from legato import flow
from legato.core import DefinitionError, parse_definition
from legato.core.model import WorkflowDefinition


def from_yaml(text: str) -> WorkflowDefinition:
    return parse_definition(text)


def one_step(step: Any) -> WorkflowDefinition:
    return flow.Workflow("w", params={"n": 1}).step(step).definition()


def yaml_step(step_yaml: str) -> WorkflowDefinition:
    body = "\n".join("    " + line for line in step_yaml.strip().splitlines())
    return from_yaml(f"id: w\nparams: {{n: 1}}\nsteps:\n  -\n{body}\n")


STEPS: list[tuple[str, Any, str]] = [
    ("noop", flow.Noop("a", description="join"), "id: a\ntype: noop\ndescription: join"),
    ("sleep", flow.Sleep("a", "1m30s"), "id: a\ntype: sleep\nduration: 90"),
    ("sleep-timedelta", flow.Sleep("a", timedelta(minutes=2)), "id: a\ntype: sleep\nduration: 2m"),
    ("sleep-template", flow.Sleep("a", "${params.n}"), "id: a\ntype: sleep\nduration: '${params.n}'"),
    (
        "shell",
        flow.Shell("a", "echo ${params.n}", env={"X": "${params.n}"}, artifacts=["out/*.csv"]),
        "id: a\ntype: shell\ncommand: echo ${params.n}\nenv: {X: '${params.n}'}\nartifacts: [out/*.csv]",
    ),
    ("python", flow.Python("a", "pkg.mod:run"), "id: a\ntype: python\nfunction: pkg.mod:run"),
    (
        "python-callable",
        flow.Python("a", parse_definition),
        "id: a\ntype: python\nfunction: legato.core.definitions:parse_definition",
    ),
    (
        "http",
        flow.Http(
            "a",
            "https://x.test/${params.n}",
            method="post",
            headers={"A": "b"},
            body={"k": [1]},
            success_status=204,
        ),
        "id: a\ntype: http\nurl: https://x.test/${params.n}\nmethod: POST\nheaders: {A: b}\nbody: {k: [1]}\nsuccess_status: [204]",
    ),
    (
        "sql",
        flow.Sql(
            "a",
            "warehouse",
            sql="select $1",
            args=["${params.n}"],
            result="rows",
            max_rows=5,
            transaction=False,
        ),
        "id: a\ntype: sql\nconnection: warehouse\nsql: select $1\nargs: ['${params.n}']\nresult: rows\nmax_rows: 5\ntransaction: false",
    ),
    (
        "sql-statements",
        flow.Sql("a", "warehouse", statements=["select 1", flow.Statement("select $1", [2])]),
        "id: a\ntype: sql\nconnection: warehouse\nstatements: [select 1, {sql: select $1, args: [2]}]",
    ),
    (
        "notebook",
        flow.Notebook("a", "nb/r.ipynb", kernel="ir"),
        "id: a\ntype: notebook\nnotebook: nb/r.ipynb\nkernel: ir",
    ),
    (
        "container",
        flow.Container(
            "a",
            "alpine:3.20",
            command=["echo", "${params.n}", 7],
            env={"A": "${params.n}"},
            mounts=[flow.Mount("/data", "/in"), flow.Mount("/out", "/out", read_only=False)],
            workdir="/in",
            pull="never",
            artifacts=["r.csv"],
        ),
        "id: a\ntype: container\nimage: alpine:3.20\ncommand: [echo, '${params.n}', '7']\nenv: {A: '${params.n}'}\n"
        "mounts: [{source: /data, target: /in}, {source: /out, target: /out, read_only: false}]\n"
        "workdir: /in\npull: never\nartifacts: [r.csv]",
    ),
    (
        "subworkflow",
        flow.Subworkflow("a", "child"),
        "id: a\ntype: subworkflow\nsubworkflow: {workflow: child}",
    ),
    (
        "subworkflow-ref",
        flow.Subworkflow(
            "a", flow.WorkflowRef("child", version=3, params={"x": "${params.n}"}, apply_run_strategy=True)
        ),
        "id: a\ntype: subworkflow\nsubworkflow: {workflow: child, version: 3, params: {x: '${params.n}'}, apply_run_strategy: true}",
    ),
    (
        "foreach",
        flow.Foreach(
            "a", "range(3)", as_="i", concurrency=2, iteration_on_failure="ignore", steps=[flow.Noop("b")]
        ),
        "id: a\ntype: foreach\nforeach: {over: 'range(3)', as: i, concurrency: 2, on_failure: ignore, steps: [{id: b, type: noop}]}",
    ),
    (
        "foreach-subworkflow",
        flow.Foreach("a", "[1, 2]", subworkflow="child"),
        "id: a\ntype: foreach\nforeach: {over: '[1, 2]', subworkflow: {workflow: child}}",
    ),
    (
        "loop",
        flow.Loop("a", while_="iteration.index < 2", max_iterations=3, steps=[flow.Noop("b")]),
        "id: a\ntype: loop\nloop: {while: iteration.index < 2, max_iterations: 3, steps: [{id: b, type: noop}]}",
    ),
    (
        "plugin",
        flow.Step("word_count", "a", text="${params.n}", top=2),
        "id: a\ntype: word_count\ntext: '${params.n}'\ntop: 2",
    ),
    (
        "generic-builtin",
        flow.Step("shell", "a", command="echo", timeout="1m"),
        "id: a\ntype: shell\ncommand: echo\ntimeout: 60",
    ),
    (
        "common-options",
        flow.Noop(
            "a",
            params={"x": flow.Expr("params.n + 1"), "y": "${params.n}"},
            retry=flow.Retry(error=2, timeout=1, backoff=flow.Backoff(initial="2s", max="1m", multiplier=3)),
            timeout=timedelta(hours=1),
            on_failure="ignore",
            queue="gpu",
            concurrency_tags=["db"],
            wait_for_signals=["go", flow.Signal("ready", {"date": "${params.n}", "rows": {">": 0}})],
            publish_signals=["done", flow.Publish("loaded", {"n": "${params.n}"})],
            outputs=["x"],
        ),
        """
id: a
type: noop
params: {x: {expr: params.n + 1}, y: '${params.n}'}
retry: {error: 2, timeout: 1, backoff: {initial: 2s, max: 1m, multiplier: 3}}
timeout: 1h
on_failure: ignore
queue: gpu
concurrency_tags: [db]
wait_for_signals: [{name: go}, {name: ready, match: {date: '${params.n}', rows: {'>': 0}}}]
publish_signals: [{name: done}, {name: loaded, params: {n: '${params.n}'}}]
outputs: [x]
""",
    ),
    ("retry-int", flow.Noop("a", retry=3), "id: a\ntype: noop\nretry: 3"),
    (
        "retry-fixed",
        flow.Noop("a", retry=flow.Retry(backoff=flow.Backoff(type="fixed", initial=30))),
        "id: a\ntype: noop\nretry: {backoff: {type: fixed, initial: 30s}}",
    ),
]


@pytest.mark.parametrize(("code", "text"), [(c, t) for _, c, t in STEPS], ids=[n for n, _, _ in STEPS])
def test_each_step_builder_gives_what_its_yaml_gives(code: Any, text: str) -> None:
    assert one_step(code) == yaml_step(text)


def test_edges_after_depends_on_and_next() -> None:
    built = (
        flow.Workflow("w")
        .step(flow.Noop("a", next=["c", flow.Next("b", when="1 > 0")]))
        .step(flow.Noop("b"))
        .step(flow.Noop("c"))
        .step(flow.Noop("d", after=["b", "c"]))
        .step(flow.Noop("e", depends_on="d"))
    )
    assert built.definition() == from_yaml(
        """
id: w
steps:
  - {id: a, type: noop, next: [c, {step: b, when: 1 > 0}]}
  - {id: b, type: noop}
  - {id: c, type: noop}
  - {id: d, type: noop, depends_on: [b, c]}
  - {id: e, type: noop, depends_on: [d]}
"""
    )


def test_workflow_options_params_and_strategies() -> None:
    built = flow.Workflow(
        "w",
        description="d",
        owner="team",
        tags=["a", "b"],
        criticality="high",
        run_strategy=flow.Parallel(4),
        step_concurrency=8,
        timeout="2h",
        params={
            "days": 7,
            "day": flow.Param(type="date", default=date(2026, 3, 1)),
            "end": flow.Param(type="date", expr="params.day + days(params.days)"),
            "env": flow.Param(type="string", required=True, description="where"),
            "region": flow.Param(type="string", default="eu", values=["eu", "us"]),
            "table": flow.Param(type="string", default="db.t", mode="fixed"),
            "pw": flow.Param(type="secret", default="warehouse_db"),
        },
    ).step(flow.Noop("a"))
    assert built.definition() == from_yaml(
        """
id: w
description: d
owner: team
tags: [a, b]
criticality: high
run_strategy: {type: parallel, max_concurrency: 4}
step_concurrency: 8
timeout: 7200
params:
  days: 7
  day: {type: date, default: 2026-03-01}
  end: {type: date, expr: params.day + days(params.days)}
  env: {type: string, required: true, description: where}
  region: {type: string, default: eu, values: [eu, us]}
  table: {type: string, default: db.t, mode: fixed}
  pw: {type: secret, default: warehouse_db}
steps: [{id: a, type: noop}]
"""
    )
    by_param = flow.Workflow("w").param("days", 7).step(flow.Noop("a")).definition()
    assert by_param.params["days"] == built.definition().params["days"]


@pytest.mark.parametrize(
    ("strategy", "text"),
    [
        (flow.Sequential(), "sequential"),
        (flow.StrictSequential(), "strict_sequential"),
        (flow.FirstOnly(), "first_only"),
        (flow.LastOnly(), "last_only"),
        (flow.SerialLatestOnly(), "serial_latest_only"),
        (flow.Parallel(), "{type: parallel}"),
        (flow.Parallel(0), "{type: parallel, max_concurrency: 0}"),
        ("last_only", "last_only"),
    ],
)
def test_run_strategies(strategy: Any, text: str) -> None:
    built = flow.Workflow("w", run_strategy=strategy).step(flow.Noop("a")).definition()
    assert built == from_yaml(f"id: w\nrun_strategy: {text}\nsteps: [{{id: a, type: noop}}]")


def test_triggers() -> None:
    built = (
        flow.Workflow("w", params={"day": flow.Param(type="date", required=True)})
        .trigger(
            flow.Cron(
                "0 2 * * *",
                id="nightly",
                timezone="Europe/Paris",
                params={"day": "${date(trigger.fire_time)}"},
                catch_up="all",
                max_catch_up=5,
                start=date(2026, 1, 1),
                end=datetime.fromisoformat("2026-12-31T18:00:00+01:00"),
                jitter="2m",
            ),
            flow.Signals(
                flow.Signal("orders", {"status": "done", "rows": {">": 0}}, when="signal.rows < 10"),
                "payments",
                join="day",
                expiry="3d",
                since="2026-01-01T00:00:00Z",
                params={"day": "${signals.orders.day}"},
            ),
        )
        .step(flow.Noop("a"))
    )
    assert built.definition() == from_yaml(
        """
id: w
params: {day: {type: date, required: true}}
triggers:
  - type: cron
    id: nightly
    cron: "0 2 * * *"
    timezone: Europe/Paris
    params: {day: "${date(trigger.fire_time)}"}
    catch_up: all
    max_catch_up: 5
    start: 2026-01-01
    end: 2026-12-31T18:00:00+01:00
    jitter: 120
  - type: signal
    signals:
      - {name: orders, match: {status: done, rows: {">": 0}}, when: signal.rows < 10}
      - name: payments
    join: [day]
    expiry: 3d
    since: 2026-01-01T00:00:00Z
    params: {day: "${signals.orders.day}"}
steps: [{id: a, type: noop}]
"""
    )


def test_to_yaml_is_canonical_yaml_that_reads_back() -> None:
    built = flow.Workflow("w", timeout=5400).step(flow.Shell("a", "echo hi", retry=2))
    text = built.to_yaml()
    assert yaml.safe_load(text) == {
        "id": "w",
        "timeout": "1h30m",
        "steps": [{"id": "a", "type": "shell", "command": "echo hi", "retry": {"error": 2}}],
    }
    assert flow.Workflow.from_yaml(text) == flow.Workflow.from_definition(built.definition())


# ------------------------------------------------------------------------------------- errors


def issues(built: flow.Workflow) -> list[str]:
    with pytest.raises(DefinitionError) as caught:
        built.definition()
    return [str(issue) for issue in caught.value.errors]


def test_bad_values_fail_with_the_path_named_errors_of_yaml() -> None:
    built = flow.Workflow("w", run_strategy=flow.Parallel(5000)).step(
        flow.Shell("a", "echo", retry=flow.Retry(error=-1), timeout="soon"),
        flow.Foreach("b", "range(2)", concurrency=0, steps=[flow.Noop("Bad Id")]),
    )
    text = """
id: w
run_strategy: {type: parallel, max_concurrency: 5000}
steps:
  - {id: a, type: shell, command: echo, retry: {error: -1}, timeout: soon}
  - {id: b, type: foreach, foreach: {over: 'range(2)', concurrency: 0, steps: [{id: Bad Id, type: noop}]}}
"""
    with pytest.raises(DefinitionError) as from_text:
        parse_definition(text)
    found = issues(built)
    assert found == [str(i) for i in from_text.value.errors]
    assert "steps[0].retry.error: must be >= 0, got -1" in found
    assert "run_strategy.max_concurrency: must be <= 1000, got 5000" in found
    assert "steps[1].foreach.concurrency: must be >= 1, got 0" in found
    assert any(i.startswith("steps[1].foreach.steps[0].id: must be lowercase") for i in found)


def test_graph_and_expression_errors_are_reported_like_yaml() -> None:
    found = issues(
        flow.Workflow("w").step(flow.Noop("a", after=["ghost"]), flow.Shell("b", "echo ${params.nope}"))
    )
    assert any(i.startswith("steps[0].depends_on") and "ghost" in i for i in found), found
    assert any(i.startswith("steps[1].command") and "nope" in i for i in found), found


def test_a_plugin_step_is_checked_against_its_schema() -> None:
    found = issues(flow.Workflow("w").step(flow.Step("word_count", "a", text="x", tpo=2)))
    assert any(i.startswith("steps[0].tpo: unknown field") for i in found), found
    assert any("steps[0].type" in i for i in issues(flow.Workflow("w").step(flow.Step("no_such_type", "a"))))


def test_a_value_yaml_cannot_hold_is_named_by_its_path() -> None:
    found = issues(flow.Workflow("w").step(flow.Noop("a", params={"x": {1, 2}})))
    assert found == ["steps[0].params.x: must be a JSON value, got a set"]


def test_builder_misuse_raises_type_errors_naming_the_option() -> None:
    with pytest.raises(TypeError, match=r"Shell\('a'\): unknown option\(s\) comand"):
        flow.Shell("a", "echo", comand="x")
    with pytest.raises(TypeError, match="give after or depends_on, not both"):
        flow.Noop("a", after=["b"], depends_on=["b"])
    with pytest.raises(TypeError, match=r"step\(\): expected a step .* got str"):
        flow.Workflow("w").step("echo hi")
    with pytest.raises(TypeError, match=r"trigger\(\): expected Cron\(...\) or Signals\(...\), got str"):
        flow.Workflow("w").trigger("0 2 * * *")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="module-level function"):
        flow.Python("a", lambda params: None)
    # every keyword of Step(...) that is a step option is that option, the rest is the plugin's config
    step = flow.Step("word_count", "a", text="x", timeout="1m")
    assert (step.timeout, dict(step.config)) == ("1m", {"text": "x"})
