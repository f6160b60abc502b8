"""Signals end to end: the signal router, trigger, scheduler and executor as real processes over a real
NATS JetStream and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from legato.bus.connection import connect_with
from legato.client import ApiError, LegatoClient
from legato.config.settings import Settings
from legato.telemetry.span_file import read_span_file
from tests.support.stack import Stack, running_stack, wait_for

SINGLE = """
id: on-upload
run_strategy: {type: parallel, max_concurrency: 50}
params:
  path: {type: string, required: true}
  size: {type: int, default: 0}
triggers:
  - type: signal
    id: big-csv
    signals:
      - name: file.uploaded
        match:
          kind: csv
          size: {">=": 100}
        when: "signal.path.endswith('.csv')"
    params:
      path: "${signals['file.uploaded'].path}"
      size: "${signals['file.uploaded'].size}"
steps:
  - id: load
    type: noop
"""

JOINED = """
id: billing
run_strategy: {type: parallel, max_concurrency: 100}
params:
  date: {type: date, required: true}
  region: {type: string, required: true}
  rows: {type: int, default: 0}
triggers:
  - type: signal
    id: ready
    signals:
      - name: orders_ready
        match: {status: done}
      - name: payments_ready
    join: [date, region]
    expiry: {expiry}
    params:
      date: "${signals.orders_ready.date}"
      region: "${signals.payments_ready.region}"
      rows: "${signals.orders_ready.rows}"
steps:
  - id: bill
    type: noop
"""

WAITER = """
id: report
run_strategy: {type: parallel, max_concurrency: 10}
params:
  date: {type: string, required: true}
steps:
  - id: prepare
    type: noop
  - id: publish
    type: noop
    depends_on: [prepare]
    wait_for_signals:
      - name: warehouse_loaded
        match:
          date: "${params.date}"
    params:
      table: "${signals.warehouse_loaded.table}"
"""

CHAIN_A = """
id: extract
run_strategy: {type: parallel, max_concurrency: 10}
params:
  day: {type: string, required: true}
steps:
  - id: dump
    type: shell
    command: 'echo "rows=42" >> "$LEGATO_OUTPUTS"'
    outputs: [rows]
    publish_signals:
      - name: extract_done
        params: {day: "${params.day}", rows: "${steps.dump.outputs.rows}"}
"""

CHAIN_B = """
id: transform
run_strategy: {type: parallel, max_concurrency: 10}
params:
  day: {type: string, required: true}
  rows: {type: int, default: 0}
triggers:
  - type: signal
    id: after-extract
    signals:
      - name: extract_done
        match: {rows: {">": 0}}
    params:
      day: "${signals.extract_done.day}"
      rows: "${signals.extract_done.rows}"
steps:
  - id: go
    type: noop
"""


async def cli(stack: Stack, *args: str) -> str:
    """Run ``legato …`` as a user would, against the stack; returns stdout (fails on a non-zero exit)."""
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "legato.cli.main", *args],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def runs_of(database_url: str, workflow_id: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT id, status, params, run_params, trigger_key, trigger FROM workflow_instance "
            "WHERE workflow_id = $1 ORDER BY seq",
            workflow_id,
        )
    finally:
        await conn.close()
    json_columns = ("params", "run_params", "trigger")
    return [{k: json.loads(v) if k in json_columns else v for k, v in r.items()} for r in rows]


async def wait_runs(
    database_url: str, workflow_id: str, count: int, *, timeout: float = 60.0, settle: float = 0.0
) -> list[dict[str, Any]]:
    """Wait until ``count`` runs exist and ended; then ``settle`` seconds more to catch any extra run."""
    deadline = time.monotonic() + timeout
    while True:
        runs = await runs_of(database_url, workflow_id)
        done = [r for r in runs if r["status"] in ("succeeded", "failed", "stopped", "skipped")]
        if len(done) >= count:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{workflow_id}: {len(done)} of {count} runs ended: {runs[:5]}")
        await asyncio.sleep(0.2)
    if settle:
        await asyncio.sleep(settle)
        runs = await runs_of(database_url, workflow_id)
    return runs


async def stored_signals(client: LegatoClient, name: str, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        res = await client.call("signal.list", {"name": name, "limit": 1000})
        if len(res["signals"]) >= count:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(res['signals'])} of {count} {name} signals stored")
        await asyncio.sleep(0.1)


async def test_single_signal_trigger_fires_once_per_matching_signal(
    settings: Settings, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path) as (_stack, client):
        await client.push(SINGLE)
        sends = [
            ({"kind": "csv", "size": 500, "path": "/a.csv"}, "s1"),  # fires
            ({"kind": "csv", "size": 500, "path": "/a.csv"}, "s1"),  # same id: stored once
            ({"kind": "csv", "size": 150, "path": "/b.csv"}, "s2"),  # fires
            ({"kind": "csv", "size": 50, "path": "/c.csv"}, "s3"),  # size too small
            ({"kind": "json", "size": 500, "path": "/d.csv"}, "s4"),  # wrong kind
            ({"kind": "csv", "size": 500, "path": "/e.txt"}, "s5"),  # `when` is false
            ({"kind": "csv", "size": "big", "path": "/f.csv"}, "s6"),  # type mismatch never matches
        ]
        for params, sid in sends:
            await client.send_signal("file.uploaded", params, signal_id=sid)
        runs = await wait_runs(settings.database_url, "on-upload", 2, settle=1.5)
        assert sorted(r["params"]["path"] for r in runs) == ["/a.csv", "/b.csv"]
        assert all(r["status"] == "succeeded" for r in runs)
        by_path = {r["params"]["path"]: r for r in runs}
        assert by_path["/a.csv"]["params"]["size"] == 500
        assert by_path["/a.csv"]["trigger"]["kind"] == "signal"
        assert by_path["/a.csv"]["trigger_key"] == "signal:big-csv:id:file.uploaded/s1"
        listed = await client.call("signal.list", {"name": "file.uploaded"})
        assert sorted(s["id"] for s in listed["signals"]) == ["s1", "s2", "s3", "s4", "s5", "s6"]


async def test_joined_trigger_fires_once_per_complete_tuple_whatever_the_order(
    settings: Settings, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path) as (stack, client):
        await client.push(JOINED.replace("{expiry}", "1d"))
        rng = random.Random(7)
        sends: list[tuple[str, dict[str, Any], str]] = []
        complete = set()
        for day in range(1, 9):
            for region in ("eu", "us"):
                date = f"2026-03-{day:02d}"
                key = (date, region)
                legs = ["orders_ready", "payments_ready"]
                if day == 8 and region == "us":
                    legs = ["orders_ready"]  # never completes
                for leg in legs:
                    body = {"date": date, "region": region, "status": "done", "rows": day * 10}
                    for copy in range(3):  # every signal sent three times, two with distinct ids
                        sends.append((leg, body, f"{leg}-{date}-{region}-{min(copy, 1)}"))
                if len(legs) == 2:
                    complete.add(key)
        # An orders signal that does not match (status) must not complete anything.
        sends.append(("orders_ready", {"date": "2026-04-01", "region": "eu", "status": "late"}, "late"))
        sends.append(("payments_ready", {"date": "2026-04-01", "region": "eu"}, "late-p"))
        rng.shuffle(sends)
        await asyncio.gather(*(client.send_signal(n, b, signal_id=i) for n, b, i in sends))
        runs = await wait_runs(settings.database_url, "billing", len(complete), settle=2.0)
        assert len(runs) == len(complete)
        got = {(r["params"]["date"], r["params"]["region"]) for r in runs}
        assert got == complete
        for r in runs:
            assert r["params"]["rows"] == int(r["params"]["date"][-2:]) * 10
            assert r["status"] == "succeeded"
        pending = await client.call("signal.pending", {"workflow_id": "billing"})
        (trig,) = pending["triggers"]
        waiting = {tuple(t["join_values"].values()): t for t in trig["tuples"]}
        assert set(waiting) == {("2026-03-08", "us"), ("2026-04-01", "eu")}
        assert waiting[("2026-03-08", "us")]["missing"] == ["payments_ready"]
        assert waiting[("2026-04-01", "eu")]["missing"] == ["orders_ready"]
        assert [a["leg"] for a in waiting[("2026-03-08", "us")]["arrived"]] == ["orders_ready"]
        shown = await cli(stack, "signal", "pending", "billing")
        assert (
            "billing / ready: signals orders_ready, payments_ready joined on date, region; 2 tuple(s) waiting"
            in shown
        )
        (line,) = [x for x in shown.splitlines() if '"2026-03-08"' in x]
        assert "orders_ready=orders_ready-2026-03-08-us-" in line and line.split()[2] == "payments_ready"


async def test_partial_tuple_expires(settings: Settings, tmp_path: Path) -> None:
    async with running_stack(settings, tmp_path) as (_stack, client):
        await client.push(JOINED.replace("{expiry}", "3s"))
        body = {"date": "2026-05-01", "region": "eu", "status": "done", "rows": 1}
        await client.send_signal("orders_ready", body, signal_id="o1")
        await stored_signals(client, "orders_ready", 1)
        await asyncio.sleep(3.5)
        await client.send_signal("payments_ready", body, signal_id="p1")  # too late for o1
        await stored_signals(client, "payments_ready", 1)
        await asyncio.sleep(0.3)
        assert await runs_of(settings.database_url, "billing") == []
        pending = await client.call("signal.pending", {"workflow_id": "billing"})
        (tup,) = pending["triggers"][0]["tuples"]
        assert tup["missing"] == ["orders_ready"]  # the expired orders leg was dropped
        await client.send_signal("orders_ready", body, signal_id="o2")  # in time for p1
        runs = await wait_runs(settings.database_url, "billing", 1, settle=1.0)
        assert len(runs) == 1


async def test_rejected_signals_are_stored_and_listed(settings: Settings, tmp_path: Path) -> None:
    async with running_stack(settings, tmp_path) as (stack, client):
        await client.push(SINGLE)
        await client.call(
            "signal.set_schema",
            {"name": "file.uploaded", "schema": {"required": ["path"], "fields": {"size": "integer"}}},
        )
        nc = await connect_with(settings, name="legato-test")
        js = nc.jetstream()
        subject = f"{settings.namespace}.legato.signal.file.uploaded"
        await js.publish(subject, b"not json", headers={"Nats-Msg-Id": "bad-json"})
        await js.publish(subject, b"[1, 2]", headers={"Nats-Msg-Id": "bad-array"})
        await js.publish(
            subject, json.dumps({"kind": "csv", "size": 500}).encode(), headers={"Nats-Msg-Id": "no-path"}
        )
        await js.publish(
            subject,
            json.dumps({"kind": "csv", "size": "x", "path": "/x.csv"}).encode(),
            headers={"Nats-Msg-Id": "bad-size"},
        )
        ack = await js.publish(subject, json.dumps({"kind": "csv", "size": 300, "path": "/ok.csv"}).encode())
        await nc.close()
        await stored_signals(client, "file.uploaded", 5)
        rejected = await client.call("signal.list", {"rejected": True})
        errors = {s["id"]: s["error"] for s in rejected["signals"]}
        assert set(errors) == {"bad-json", "bad-array", "no-path", "bad-size"}
        assert "not valid JSON" in errors["bad-json"]
        assert "not a JSON object: got an array" in errors["bad-array"]
        assert "path: required" in errors["no-path"]
        assert "size: must be integer" in errors["bad-size"]
        raw = {s["id"]: s.get("raw") for s in rejected["signals"]}
        assert raw["bad-json"] == "not json"
        # The stream went on: the good one (no message id: keyed by its stream sequence and stored time,
        # so a recreated stream cannot collide) started a run.
        runs = await wait_runs(settings.database_url, "on-upload", 1, settle=1.0)
        assert [r["params"]["path"] for r in runs] == ["/ok.csv"]
        assert runs[0]["trigger_key"].startswith(f"signal:big-csv:id:file.uploaded/{ack.seq}@")
        # The same through the CLI.
        listed = await cli(stack, "signal", "list", "--rejected")
        assert "bad-json" in listed and "REJECTED" in listed and "not a JSON object" in listed
        sent = await cli(
            stack, "signal", "send", "file.uploaded", "kind=csv", "size=700", "path=/cli.csv", "--id", "c1"
        )
        assert "signal file.uploaded id c1 stored" in sent
        runs = await wait_runs(settings.database_url, "on-upload", 2, settle=0.5)
        assert sorted(r["params"]["path"] for r in runs) == ["/cli.csv", "/ok.csv"]
        with pytest.raises(ApiError) as err:
            await client.call("signal.set_schema", {"name": "x", "schema": {"fields": {"a": "date"}}})
        assert err.value.code == "bad_request" and "schema.fields.a" in err.value.message
        for bad_name in ("no spaces", "_legato.wait", "a..b"):
            with pytest.raises(ApiError) as err:
                await client.send_signal(bad_name, {})
            assert err.value.code == "bad_request" and "a signal name is letters" in err.value.message


async def test_step_waits_for_a_matching_signal_then_gets_its_fields(
    settings: Settings, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path) as (_stack, client):
        await client.push(WAITER)
        # One matching signal exists before the run; another date's signal must not satisfy the other run.
        await client.send_signal(
            "warehouse_loaded", {"date": "2026-01-01", "table": "t_early"}, signal_id="w0"
        )
        await stored_signals(client, "warehouse_loaded", 1)
        early = await client.start("report", {"date": "2026-01-01"})
        late = await client.start("report", {"date": "2026-01-02"})
        info = await wait_for(client, early.instance_id)
        assert info["status"] == "succeeded", info
        steps = {s["step_id"]: s for s in info["steps"]}
        assert steps["publish"]["params"]["table"] == "t_early"
        # The other run waits, visibly.
        deadline = time.monotonic() + 20
        while True:
            waiting = await client.get(late.instance_id)
            step = {s["step_id"]: s for s in waiting["steps"]}["publish"]
            if step["status"] == "waiting":
                break
            assert time.monotonic() < deadline, waiting
            await asyncio.sleep(0.2)
        assert "warehouse_loaded" in json.dumps(step["reason"])
        pending = await client.call("signal.pending", {"workflow_id": "report"})
        assert [(w["instance_id"], w["step_id"], w["match"]) for w in pending["steps"]] == [
            (late.instance_id, "publish", {"date": {"op": "=", "value": "2026-01-02"}})
        ]
        await client.send_signal("warehouse_loaded", {"date": "2026-01-03", "table": "nope"}, signal_id="w1")
        await client.send_signal(
            "warehouse_loaded", {"date": "2026-01-02", "table": "t_late"}, signal_id="w2"
        )
        info = await wait_for(client, late.instance_id)
        assert info["status"] == "succeeded", info
        steps = {s["step_id"]: s for s in info["steps"]}
        assert steps["publish"]["params"]["table"] == "t_late"
        assert (await client.call("signal.pending", {"workflow_id": "report"}))["steps"] == []
        lineage = await client.call("signal.lineage", {"name": "warehouse_loaded", "id": "w2"})
        assert [u["instance_id"] for u in lineage["signal"]["unblocked"]] == [late.instance_id]


async def test_published_signal_starts_another_workflow_and_lineage_follows_the_chain(
    settings: Settings, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path) as (_stack, client):
        await client.push(CHAIN_B)
        await client.push(CHAIN_A)
        a = await client.start("extract", {"day": "mon"})
        info = await wait_for(client, a.instance_id)
        assert info["status"] == "succeeded", info
        runs = await wait_runs(settings.database_url, "transform", 1, settle=1.5)
        assert len(runs) == 1  # exactly once per step success
        assert runs[0]["params"] == {"day": "mon", "rows": 42}
        down = await client.call("signal.lineage", {"instance_id": a.instance_id})
        (published,) = down["run"]["published"]
        assert published["name"] == "extract_done" and published["publisher_instance"] == a.instance_id
        assert [t["instance_id"] for t in published["triggered"]] == [runs[0]["id"]]
        up = await client.call("signal.lineage", {"instance_id": runs[0]["id"]})
        (started_by,) = up["run"]["started_by"]
        assert started_by["name"] == "extract_done"
        assert started_by["published_by"]["instance_id"] == a.instance_id


async def test_signals_before_a_trigger_existed_count_only_with_since(
    settings: Settings, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path) as (_stack, client):
        await client.send_signal(
            "file.uploaded", {"kind": "csv", "size": 500, "path": "/old.csv"}, signal_id="old"
        )
        await stored_signals(client, "file.uploaded", 1)
        await client.push(SINGLE)
        await client.send_signal(
            "file.uploaded", {"kind": "csv", "size": 500, "path": "/new.csv"}, signal_id="new"
        )
        runs = await wait_runs(settings.database_url, "on-upload", 1, settle=1.5)
        assert [r["params"]["path"] for r in runs] == ["/new.csv"]
        since = SINGLE.replace("id: on-upload", "id: on-upload-since").replace(
            "    id: big-csv\n", "    id: big-csv\n    since: 2020-01-01T00:00:00Z\n"
        )
        await client.push(since)
        runs = await wait_runs(settings.database_url, "on-upload-since", 2, settle=1.5)
        assert sorted(r["params"]["path"] for r in runs) == ["/new.csv", "/old.csv"]
        # Deactivated: no more runs.
        await client.call("workflow.deactivate", {"workflow_id": "on-upload"})
        await client.send_signal(
            "file.uploaded", {"kind": "csv", "size": 500, "path": "/off.csv"}, signal_id="off"
        )
        await wait_runs(settings.database_url, "on-upload-since", 3, settle=1.0)
        assert len(await runs_of(settings.database_url, "on-upload")) == 1


async def test_the_example_chain_publish_join_wait_and_lineage(settings: Settings, tmp_path: Path) -> None:
    examples = Path(__file__).resolve().parents[2] / "examples"
    async with running_stack(settings, tmp_path) as (_stack, client):
        for name in ("daily-report", "warehouse-load"):
            await client.push((examples / f"{name}.yaml").read_text(), source=f"{name}.yaml")
        await client.send_signal("fx_rates_ready", {"date": "2026-03-01", "source": "ecb"}, signal_id="fx-1")
        load = await client.start("warehouse-load", {"date": "2026-03-01"})
        assert (await wait_for(client, load.instance_id))["status"] == "succeeded"
        deadline = time.monotonic() + 30
        while not (runs := await runs_of(settings.database_url, "daily-report")):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        report = runs[0]["id"]
        assert runs[0]["params"] == {"date": "2026-03-01", "rows": 1200}
        while True:  # the send step waits for the approval, visibly
            info = await client.get(report)
            send = {s["step_id"]: s for s in info["steps"]}["send"]
            if send["status"] == "waiting":
                break
            assert time.monotonic() < deadline, info
            await asyncio.sleep(0.2)
        await client.send_signal("approval", {"date": "2026-03-01", "by": "ada"}, signal_id="ok-1")
        info = await wait_for(client, report)
        assert info["status"] == "succeeded", info
        assert {s["step_id"]: s for s in info["steps"]}["send"]["params"]["approver"] == "ada"
        lineage = (await client.call("signal.lineage", {"instance_id": report}))["run"]
        started = {s["name"]: s for s in lineage["started_by"]}
        assert set(started) == {"warehouse_loaded", "fx_rates_ready"}
        assert started["warehouse_loaded"]["published_by"]["instance_id"] == load.instance_id
        assert [s["id"] for s in lineage["unblocked_by"]] == ["ok-1"]


async def test_signal_spans_lead_to_the_run_they_started(settings: Settings, tmp_path: Path) -> None:
    spans_path = tmp_path / "spans.jsonl"
    env = {"LEGATO_TEST_SPAN_FILE": str(spans_path)}
    async with running_stack(settings, tmp_path, extra_env=env) as (_stack, client):
        await client.push(JOINED.replace("{expiry}", "1d"))
        body = {"date": "2026-06-01", "region": "eu", "status": "done", "rows": 3}
        await client.send_signal("orders_ready", body, signal_id="o")
        await stored_signals(client, "orders_ready", 1)
        await client.send_signal("payments_ready", body, signal_id="p")
        (run,) = await wait_runs(settings.database_url, "billing", 1)
    spans = list(read_span_file(spans_path))
    by_id = {s["span_id"]: s for s in spans}
    ingest = {
        s["attributes"].get("messaging.message.id"): s for s in spans if s["name"] == "signal_router ingest"
    }
    assert {"o", "p"} <= set(ingest)
    (fire,) = [s for s in spans if s["name"] == "signal_router fire"]
    assert fire["attributes"]["legato.instance_id"] == run["id"]
    # The tuple completed in the trace of the newest signal, linking the other one.
    assert fire["parent_span_id"] == ingest["p"]["span_id"]
    assert [link["span_id"] for link in fire["links"]] == [ingest["o"]["span_id"]]
    # The ingest span continues the sender's trace (the API call that published it).
    assert ingest["p"]["parent_span_id"] in by_id
    # The run's root span links to the firing.
    (root,) = [
        s
        for s in spans
        if s["name"] == "workflow.run" and s["attributes"].get("legato.instance_id") == run["id"]
    ]
    # The run's root span links to the firing and to each signal's span.
    linked = {link["span_id"] for link in root["links"]}
    assert {fire["span_id"], ingest["o"]["span_id"], ingest["p"]["span_id"]} <= linked
