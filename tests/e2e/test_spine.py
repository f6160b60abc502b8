"""One workflow run end to end through trigger -> scheduler -> executor, as real processes, over a real
NATS JetStream and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg
import pytest

from legato.bus.connection import connect_with
from legato.bus.streams import KEEPER_SUBJECT
from legato.bus.topology import Topology
from legato.client import ApiError
from legato.config.settings import Settings
from legato.security.keys import Signer
from legato.security.signing import sign_request
from tests.support.stack import running_stack, wait_for

PIPELINE = """
id: pipeline
run_strategy: {type: parallel, max_concurrency: 50}
params:
  rows: {type: int, default: 3}
  label: {type: string, default: "x"}
steps:
  - id: extract
    type: shell
    command: 'echo "rows=$LEGATO_PARAM_ROWS" >> "$LEGATO_OUTPUTS"; echo "tag=$${LEGATO_PARAM_LABEL}-e" >> "$LEGATO_OUTPUTS"'
    outputs: [rows, tag]
  - id: transform
    type: shell
    depends_on: [extract]
    params:
      doubled: {expr: "steps.extract.outputs.rows * 2"}
      tag: "${steps.extract.outputs.tag}-t"
    command: 'echo "{\\"total\\": $LEGATO_PARAM_DOUBLED, \\"tag\\": \\"$LEGATO_PARAM_TAG\\"}" > "$LEGATO_OUTPUTS"'
    outputs: [total, tag]
  - id: load
    type: noop
    depends_on: [transform]
"""

BRANCHY = """
id: branchy
run_strategy: {type: parallel, max_concurrency: 20}
params:
  n: {type: int, default: 1}
steps:
  - id: check
    type: shell
    command: 'echo "n=$LEGATO_PARAM_N" > "$LEGATO_OUTPUTS"'
    outputs: [n]
    next:
      - {step: big, when: "steps.check.outputs.n > 10"}
      - {step: small, when: "steps.check.outputs.n <= 10"}
  - id: big
    type: noop
  - id: small
    type: noop
  - id: report
    type: noop
    depends_on: [big, small]
"""

FLAKY = """
id: flaky
run_strategy: {type: parallel, max_concurrency: 20}
steps:
  - id: boom
    type: shell
    command: 'echo "attempt $LEGATO_ATTEMPT" >&2; exit 3'
    retry:
      error: 2
      backoff: {type: exponential, initial: 0.3s, max: 5s, multiplier: 2}
  - id: never
    type: noop
    depends_on: [boom]
"""


async def test_multi_step_params_and_outputs_flow_downstream(settings: Settings, tmp_path: Path) -> None:
    async with running_stack(settings, tmp_path) as (_stack, client):
        await client.push(PIPELINE, source="pipeline.yaml")
        res = await client.start("pipeline", {"rows": 21, "label": "abc"})
        info = await wait_for(client, res.instance_id)
        assert info["status"] == "succeeded", info
        steps = {s["step_id"]: s for s in info["steps"]}
        assert steps["extract"]["outputs"] == {"rows": 21, "tag": "abc-e"}
        assert steps["transform"]["params"]["doubled"] == 42
        assert steps["transform"]["outputs"] == {"total": 42, "tag": "abc-e-t"}
        assert steps["load"]["status"] == "succeeded"
        assert info["params"] == {"rows": 21, "label": "abc"}
        events = [t["event"] for t in info["timeline"]]
        assert events[0] == "created" and "started" in events and events[-1] == "succeeded"
        # The scheduler put each work-queue stream's keeper (bus/streams.py, keep_work_queues_open):
        # once the run's messages are acked, it is the one message left in each, so none empties.
        nc = await connect_with(settings, name="legato-test")
        try:
            js, topo = nc.jetstream(), Topology(settings.namespace, settings.partitions)
            for stream, kind in (
                (topo.triggers_stream, "trigger"),
                (topo.events_stream, "event"),
                (topo.work_stream, "work"),
            ):
                keeper = f"{topo.subject_prefix(kind)}{KEEPER_SUBJECT}"
                assert (await js.stream_info(stream)).state.messages == 1, stream
                assert (await js.get_last_msg(stream, keeper)).subject == keeper
        finally:
            await nc.close()


async def test_conditional_branch_is_taken_from_a_step_output(settings: Settings, tmp_path: Path) -> None:
    async with running_stack(settings, tmp_path) as (_stack, client):
        await client.push(BRANCHY)
        big = await client.start("branchy", {"n": 50})
        small = await client.start("branchy", {"n": 2})
        for run, taken, skipped in ((big, "big", "small"), (small, "small", "big")):
            info = await wait_for(client, run.instance_id)
            assert info["status"] == "succeeded", info
            steps = {s["step_id"]: s for s in info["steps"]}
            assert steps[taken]["status"] == "succeeded"
            assert steps[skipped]["status"] == "skipped"
            assert steps[skipped]["reason"]["code"] == "condition_false"
            assert steps["report"]["status"] == "succeeded"  # joins after either branch


async def test_failing_step_retries_with_backoff_then_fails_the_run(
    settings: Settings, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path) as (_stack, client):
        await client.push(FLAKY)
        res = await client.start("flaky")
        info = await wait_for(client, res.instance_id)
        assert info["status"] == "failed"
        steps = {s["step_id"]: s for s in info["steps"]}
        boom = steps["boom"]
        assert boom["status"] == "failed"
        assert [a["attempt"] for a in boom["attempts"]] == [1, 2, 3]
        assert all(a["status"] == "failed" and a["exit_code"] == 3 for a in boom["attempts"])
        assert "attempt 3" in (boom["attempts"][-1]["log_tail"] or "")
        # Backoff: the gaps between attempts grow (0.3 s, then 0.6 s).
        from datetime import datetime

        starts = [datetime.fromisoformat(a["dispatched_at"]) for a in boom["attempts"]]
        ends = [datetime.fromisoformat(a["ended_at"]) for a in boom["attempts"]]
        assert (starts[1] - ends[0]).total_seconds() >= 0.25
        assert (starts[2] - ends[1]).total_seconds() >= 0.55
        assert steps["never"]["status"] == "pending"  # on_failure: fail ends the run at once
        assert "boom" in info["error"]


async def test_duplicate_start_requests_give_one_run(settings: Settings, tmp_path: Path) -> None:
    async with running_stack(settings, tmp_path) as (_stack, client):
        await client.push(PIPELINE)
        results = await asyncio.gather(
            *(client.start("pipeline", request_id="same-request") for _ in range(20))
        )
        ids = {r.instance_id for r in results}
        assert len(ids) == 1
        assert sum(not r.duplicate for r in results) == 1  # in one batch or across batches alike
        info = await wait_for(client, ids.pop())
        assert info["status"] == "succeeded"
        again = await client.start("pipeline", request_id="same-request")
        assert again.duplicate is True and again.status == "succeeded"
        listed = await client.call("instance.list", {"workflow_id": "pipeline"})
        assert len(listed["instances"]) == 1


async def test_bad_requests_get_structured_errors_and_write_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path) as (_stack, client):
        await client.push(PIPELINE)
        with pytest.raises(ApiError) as err:
            await client.start("nope")
        assert err.value.code == "not_found" and "nope" in err.value.message
        with pytest.raises(ApiError) as err:
            await client.start("pipeline", {"rows": "many"})
        assert err.value.code == "invalid_params"
        assert any(e["path"] == "params.rows" for e in err.value.details["errors"])
        with pytest.raises(ApiError) as err:
            await client.start("pipeline", {"undeclared": 1})
        assert err.value.code == "invalid_params"
        with pytest.raises(ApiError) as err:
            await client.push("id: Bad Id\nsteps: []\n", source="bad.yaml")
        assert err.value.code == "invalid_definition" and err.value.details["errors"]
        await client.call("workflow.deactivate", {"workflow_id": "pipeline"})
        with pytest.raises(ApiError) as err:
            await client.start("pipeline")
        assert err.value.code == "inactive"
        # Not JSON at all (signed, as every request must be): still a structured reply, not a timeout.
        nc = await connect_with(settings, name="legato-test")
        subject = client.topology.api_subject("instance", "start")
        signed = sign_request(Signer.from_file(settings.nats_creds), subject, b"{not json")
        try:
            reply = await nc.request(subject, b"{not json", timeout=5, headers=signed)
        finally:
            await nc.close()
        body = json.loads(reply.data)
        assert body["error"]["code"] == "bad_request"
        with pytest.raises(ApiError) as err:
            await client.call("instance.start", {"workflow_id": "pipeline", "bogus_field": 1})
        assert err.value.code == "bad_request" and "bogus_field" in err.value.message
    conn = await asyncpg.connect(settings.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM workflow_instance") == 0
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE subject LIKE '%trigger%' AND payload::text LIKE '%start%'"
            )
            == 0
        )
    finally:
        await conn.close()


async def test_every_message_delivered_twice_changes_nothing(settings: Settings, tmp_path: Path) -> None:
    async with running_stack(settings, tmp_path, extra_env={"LEGATO_TEST_DELIVER_TWICE": "1"}) as (
        _s,
        client,
    ):
        await client.push(PIPELINE)
        await client.push(FLAKY)
        await client.push(BRANCHY)
        runs = [await client.start("pipeline", {"rows": i}) for i in range(5)]
        runs.append(await client.start("flaky"))
        runs.append(await client.start("branchy", {"n": 11}))
        infos = [await wait_for(client, r.instance_id) for r in runs]
    assert [i["status"] for i in infos] == ["succeeded"] * 5 + ["failed", "succeeded"]
    for info in infos[:5]:
        for step in info["steps"]:
            assert len(step["attempts"]) == 1, step  # a repeated work item did not run a second attempt
    assert len({s["step_id"]: s for s in infos[5]["steps"]}["boom"]["attempts"]) == 3
    conn = await asyncpg.connect(settings.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM workflow_instance") == 7
        assert await conn.fetchval("SELECT count(*) FROM dead_letter") == 0
        dup_events = await conn.fetchval(
            "SELECT count(*) FROM (SELECT instance_id, event, step_id FROM timeline "
            "WHERE event IN ('created', 'started', 'succeeded', 'step_succeeded') "
            "GROUP BY 1, 2, 3 HAVING count(*) > 1) d"
        )
        assert dup_events == 0
    finally:
        await conn.close()


def _ledger_lines(path: Path) -> list[tuple[str, str, int]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        inst, step, attempt = line.split()
        out.append((inst, step, int(attempt)))
    return out


LEDGER = """
id: ledger
run_strategy: {type: parallel, max_concurrency: 200}
steps:
  - id: a
    type: shell
    command: 'sleep 0.2; echo "$LEGATO_INSTANCE_ID $LEGATO_STEP_ID $LEGATO_ATTEMPT" >> {ledger}'
    retry: {platform: 5, backoff: {type: fixed, initial: 0.2s}}
  - id: b
    type: shell
    depends_on: [a]
    command: 'sleep 0.2; echo "$LEGATO_INSTANCE_ID $LEGATO_STEP_ID $LEGATO_ATTEMPT" >> {ledger}'
    retry: {platform: 5, backoff: {type: fixed, initial: 0.2s}}
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "victim",
    [
        "scheduler",
        # Executor kill -9 is also proven in CI by tests/chaos/test_executor_kill.py.
        pytest.param("executor0", marks=pytest.mark.soak),
        pytest.param("trigger", marks=pytest.mark.soak),
    ],
)
async def test_kill_9_mid_run_finishes_every_run_exactly_once(
    settings: Settings, tmp_path: Path, victim: str
) -> None:
    ledger = tmp_path / "ledger.txt"
    n = 40
    async with running_stack(settings, tmp_path, concurrency=8) as (stack, client):
        await client.push(LEDGER.replace("{ledger}", str(ledger)))
        runs = [await client.start("ledger", request_id=f"r{i}") for i in range(n // 2)]
        await asyncio.sleep(1.0)
        stack[victim].kill9()
        if victim == "trigger":
            # Starts retried by the client after the API died are deduplicated by request id.
            await asyncio.sleep(0.5)
            stack[victim].start()
            from tests.support.stack import wait_api

            await wait_api(client)
            runs += [await client.start("ledger", request_id=f"r{i}") for i in range(n)]
        else:
            runs += [await client.start("ledger", request_id=f"r{i}") for i in range(n // 2, n)]
            await asyncio.sleep(0.5)
            stack[victim].start()
        ids = sorted({r.instance_id for r in runs})
        assert len(ids) == n
        infos = [await wait_for(client, i, timeout=120) for i in ids]
    assert all(i["status"] == "succeeded" for i in infos), [(i["instance_id"], i["status"]) for i in infos]
    lines = _ledger_lines(ledger)
    for info in infos:
        for step in info["steps"]:
            attempts = step["attempts"]
            done = [a for a in attempts if a["status"] == "succeeded"]
            assert len(done) == 1, step
            ran = [x for x in lines if x[0] == info["instance_id"] and x[1] == step["step_id"]]
            # Ran to completion once per succeeded attempt; a second run only for an attempt lost with
            # its executor, and then that loss is visible as an earlier attempt.
            assert any(x[2] == done[0]["attempt"] for x in ran)
            extra = [x for x in ran if x[2] != done[0]["attempt"]]
            lost = {a["attempt"] for a in attempts if a["status"] == "lost"}
            assert all(x[2] in lost for x in extra), (step, ran)
    conn = await asyncpg.connect(settings.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM workflow_instance") == n
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0
    finally:
        await conn.close()
