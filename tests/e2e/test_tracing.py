"""One trace per run across every service, read from the span file all real service processes write
(``LEGATO_TEST_SPAN_FILE``), including after a ``kill -9`` of the scheduler mid-run.

The span contract (DESIGN §8): a run's root span ``workflow.run`` has its span id reserved at run
creation (stored as ``workflow_instance.traceparent``) and is emitted when the run ends; an API start
continues the API request's trace; ``step.attempt`` spans (children of the run) have their span ids
reserved at dispatch and carried in the WorkItem's ``traceparent``, so each executor's
``execute <type>`` span is their child.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from opentelemetry import context as otel_context

from legato.config.settings import Settings
from legato.devstack.otlp_sink import OtlpSink
from legato.telemetry.ids import remote_parent
from legato.telemetry.span_file import read_span_file
from tests.support.stack import running_stack, wait_for

TRACED = """
id: traced
run_strategy: {type: parallel, max_concurrency: 5}
steps:
  - id: flaky
    type: shell
    command: 'if [ "$LEGATO_ATTEMPT" = "1" ]; then exit 3; fi; echo ok'
    retry:
      error: 2
      backoff: {type: fixed, initial: 0.2s}
  - id: each
    type: foreach
    depends_on: [flaky]
    foreach:
      over: "range(4)"
      as: k
      concurrency: 2
      steps:
        - id: work
          type: shell
          command: 'sleep 0.6'
  - id: done
    type: noop
    depends_on: [each]
"""

SIMPLE = """
id: simple
run_strategy: {type: parallel, max_concurrency: 5}
steps:
  - id: only
    type: noop
"""


def span_env(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    path = tmp_path / "spans.jsonl"
    return path, {"LEGATO_TEST_SPAN_FILE": str(path)}


def ancestors(span: Mapping[str, Any], by_id: Mapping[str, Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    out = []
    seen = set()
    parent = span.get("parent_span_id")
    while parent and parent in by_id and parent not in seen:
        seen.add(parent)
        out.append(by_id[parent])
        parent = by_id[parent].get("parent_span_id")
    return out


async def attempt_ids(settings: Settings, instance_id: str) -> set[str]:
    """Attempts of the run and of its foreach iterations (child runs)."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        rows = await conn.fetch(
            "SELECT a.id FROM step_attempt a JOIN workflow_instance i ON i.id = a.instance_id "
            "WHERE i.id = $1 OR i.root_instance_id = $1 OR i.parent_instance_id = $1",
            instance_id,
        )
        return {r["id"] for r in rows}
    finally:
        await conn.close()


async def test_every_service_writes_its_spans_and_the_api_trace_reaches_the_scheduler(
    settings: Settings, tmp_path: Path
) -> None:
    path, env = span_env(tmp_path)
    async with running_stack(settings, tmp_path, extra_env=env) as (stack, client):
        await client.push(SIMPLE)
        res = await client.start("simple", {})
        info = await wait_for(client, res.instance_id)
        assert info["status"] == "succeeded", info
        # The CLI's trace view of the same run, from stored data.
        shown = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "legato.cli.main", "show", res.instance_id, "--trace", "--json"],
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shown.returncode == 0, shown.stderr
        tree = json.loads(shown.stdout)
        assert tree["root"]["name"] == "workflow.run" and tree["root"]["status"] == "succeeded"
        [step] = [c for c in tree["root"]["children"] if c["name"] == "step"]
        assert [a["name"] for a in step["children"]] == ["step.attempt"]
    spans = list(read_span_file(path))
    services = {s["service"] for s in spans}
    assert {"legato-trigger", "legato-scheduler", "legato-executor"} <= services
    [api] = [
        s
        for s in spans
        if s["name"] == "api instance.start" and s["attributes"].get("legato.instance_id") == res.instance_id
    ]
    assert api["service"] == "legato-trigger"
    # The StartRun carried the request's traceparent: the scheduler's consumer continued that trace.
    applied = [s for s in spans if s["parent_span_id"] == api["span_id"]]
    assert any(s["service"] == "legato-scheduler" and s["kind"] == "CONSUMER" for s in applied), applied
    executed = [
        s
        for s in spans
        if s["name"] == "execute noop" and s["attributes"].get("legato.instance_id") == res.instance_id
    ]
    assert len(executed) == 1 and executed[0]["service"] == "legato-executor"
    for s in spans:
        assert len(s["trace_id"]) == 32 and len(s["span_id"]) == 16
        assert s["end_ns"] >= s["start_ns"] > 0


@pytest.mark.slow
async def test_one_trace_covers_a_run_with_a_retry_and_a_foreach_across_a_scheduler_kill(
    settings: Settings, tmp_path: Path
) -> None:
    path, env = span_env(tmp_path)
    async with running_stack(settings, tmp_path, extra_env=env) as (stack, client):
        await client.push(TRACED)
        res = await client.start("traced", {})
        run_id = res.instance_id
        # Kill the scheduler once the foreach is under way, then bring it back.
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            info = await client.get(run_id)
            steps = {s["step_id"]: s for s in info.get("steps", [])}
            if steps.get("each", {}).get("status") == "running":
                break
            assert asyncio.get_running_loop().time() < deadline, info
            await asyncio.sleep(0.05)
        stack["scheduler"].kill9()
        await asyncio.sleep(0.5)
        stack["scheduler"].start()
        info = await wait_for(client, run_id, timeout=120)
        assert info["status"] == "succeeded", info
        attempts = await attempt_ids(settings, run_id)
    spans = list(read_span_file(path))
    by_id = {s["span_id"]: s for s in spans}

    [root] = [
        s
        for s in spans
        if s["name"] == "workflow.run" and s["attributes"].get("legato.instance_id") == run_id
    ]
    trace_id = root["trace_id"]
    assert info["trace_id"] == trace_id  # `legato show` prints the trace to look up in Jaeger
    assert root["service"] == "legato-scheduler"
    assert root["attributes"]["legato.workflow_id"] == "traced"
    assert root["attributes"]["legato.status"] == "succeeded"
    assert root["attributes"]["legato.trigger_kind"] == "api"
    for key in ("legato.workflow_version", "legato.run_strategy"):
        assert key in root["attributes"], key
    in_trace = [s for s in spans if s["trace_id"] == trace_id]
    services = {s["service"] for s in in_trace}
    assert {"legato-trigger", "legato-scheduler", "legato-executor"} <= services, services
    # An API start continues the API request's trace: the request span is the run's parent.
    parent = by_id[root["parent_span_id"]]
    assert parent["name"] == "api instance.start" and parent["service"] == "legato-trigger"

    step_attempts = [s for s in in_trace if s["name"] == "step.attempt"]
    executes = [s for s in in_trace if s["name"].startswith("execute ")]
    # Every attempt (of the run and of its iterations, before and after the kill) has its span; one
    # whose result was applied just as the scheduler died may have lost its span with the process.
    spanned = {s["attributes"]["legato.attempt_id"] for s in step_attempts}
    assert spanned <= attempts and len(spanned) >= len(attempts) - 1, (spanned, attempts)
    assert len(executes) >= len(attempts) - 2  # and an attempt lost with the kill may never have run
    for s in step_attempts:
        assert root in ancestors(s, by_id), f"step.attempt {s['attributes']} is not under workflow.run"
        for key in ("legato.step_id", "legato.attempt", "legato.attempt_id", "legato.outcome"):
            assert key in s["attributes"], key
    for s in executes:
        parent = by_id.get(s["parent_span_id"] or "")
        assert parent is not None and parent["name"] == "step.attempt", s
        assert parent["attributes"]["legato.attempt_id"] == s["attributes"]["legato.attempt_id"]
    flaky = sorted(
        (s for s in step_attempts if s["attributes"]["legato.step_id"] == "flaky"),
        key=lambda s: s["attributes"]["legato.attempt"],
    )
    assert [(s["attributes"]["legato.attempt"], s["attributes"]["legato.outcome"]) for s in flaky] == [
        (1, "failed"),
        (2, "succeeded"),
    ]
    assert any(s["name"] == "step.retry_scheduled" and root in ancestors(s, by_id) for s in in_trace)
    work = [s for s in step_attempts if s["attributes"]["legato.step_id"] == "work"]
    assert len(work) >= 4  # the four foreach iterations
    [wait] = [s for s in in_trace if s["name"] == "run.queue_wait"]
    assert wait["parent_span_id"] == root["span_id"]
    assert root["start_ns"] <= wait["start_ns"] and max(s["end_ns"] for s in step_attempts) <= root["end_ns"]
    # The signal router part of the contract (signal-started runs link to the signal spans) is checked
    # where the router lives; it is not in this branch.


async def test_real_processes_export_one_trace_per_run_over_otlp_http(
    settings: Settings, tmp_path: Path
) -> None:
    """What operators get: each service exports OTLP/HTTP to a collector (here a decoding sink)."""
    with OtlpSink() as sink:
        env = {**sink.env(), "OTEL_BSP_SCHEDULE_DELAY": "200", "OTEL_METRIC_EXPORT_INTERVAL": "500"}
        async with running_stack(settings, tmp_path, extra_env=env) as (_stack, client):
            await client.push(SIMPLE)
            res = await client.start("simple", {})
            info = await wait_for(client, res.instance_id)
            assert info["status"] == "succeeded", info
            trace_id = info["trace_id"]

            def complete() -> bool:
                names = {(s.service, s.name) for s in sink.spans if s.trace_id == trace_id}
                return {
                    ("legato-trigger", "api instance.start"),
                    ("legato-scheduler", "workflow.run"),
                    ("legato-executor", "execute noop"),
                } <= names and "legato.runs.finished" in sink.metric_names

            for _ in range(100):
                if complete():
                    break
                await asyncio.sleep(0.1)
        spans = [s for s in sink.spans if s.trace_id == trace_id]
        assert complete(), (sorted({(s.service, s.name) for s in spans}), sorted(sink.metric_names))
    by_id = {s.span_id: s for s in spans}
    [root] = [s for s in spans if s.name == "workflow.run"]
    assert root.attributes["legato.instance_id"] == res.instance_id
    assert root.attributes["legato.workflow_id"] == "simple"
    [executed] = [s for s in spans if s.name == "execute noop"]
    # The executor's span hangs under the run's root through the step attempt span.
    chain = []
    parent = executed.parent_span_id
    while parent in by_id:
        chain.append(by_id[parent].name)
        parent = by_id[parent].parent_span_id
    assert "step.attempt" in chain and "workflow.run" in chain, chain


async def test_a_trace_not_sampled_at_the_api_is_recorded_by_no_service(
    settings: Settings, tmp_path: Path
) -> None:
    """The sampling decision rides in the stored traceparents: the run root, attempts and executor
    spans of an unsampled request are all dropped, while a request that arrives sampled is recorded
    by every service — and both runs themselves are unaffected."""
    with OtlpSink() as sink:
        env = {
            **sink.env(),
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0",
        }
        async with running_stack(settings, tmp_path, extra_env=env) as (_stack, client):
            await client.push(SIMPLE)
            dropped = await client.start("simple", {})
            # The caller's own trace, sampled: the client carries it in the request's traceparent.
            token = otel_context.attach(remote_parent(0xABC, 0xDEF, sampled=True))
            try:
                kept = await client.start("simple", {})
            finally:
                otel_context.detach(token)
            infos = [await wait_for(client, r.instance_id) for r in (dropped, kept)]
            assert [i["status"] for i in infos] == ["succeeded", "succeeded"], infos
            assert infos[1]["trace_id"] == f"{0xABC:032x}"
            wanted = {"workflow.run", "step.attempt", "execute noop"}
            for _ in range(100):
                if wanted <= {s.name for s in sink.spans if s.trace_id == infos[1]["trace_id"]}:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # a few more batch-processor delays for anything unsampled
        kept_names = {s.name for s in sink.spans if s.trace_id == infos[1]["trace_id"]}
        assert wanted <= kept_names, kept_names
        dropped_names = {(s.service, s.name) for s in sink.spans if s.trace_id == infos[0]["trace_id"]}
        assert dropped_names == set(), dropped_names
