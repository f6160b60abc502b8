"""``profile.py --bus`` splits a run's critical path where its start, work item and result reached
nats-server, as a passive subscriber saw them: each message must land on its run's hop, the other
messages on the same subjects must not, and a message published again keeps its first time."""

from __future__ import annotations

from typing import Any

from legato.bus.topology import Topology
from legato.protocol.messages import (
    AttemptFinished,
    AttemptStarted,
    StartRun,
    TriggerInfo,
    WorkflowChanged,
    WorkItem,
    encode,
)
from tests.support.bench import load_bench_module


def load():  # type: ignore[no-untyped-def]
    return load_bench_module("profile.py")


def start(run: str) -> bytes:
    return encode(
        StartRun(workflow_id="wf", trigger_key=run, instance_id=run, trigger=TriggerInfo(kind="api"))
    )


def work(run: str) -> bytes:
    return encode(
        WorkItem(
            attempt_id=f"{run}-a1",
            workflow_id="wf",
            instance_id=run,
            step_id="only",
            attempt=1,
            step_type="noop",
            reply_subject="x",
        )
    )


def result(run: str) -> bytes:
    return encode(
        AttemptFinished(
            attempt_id=f"{run}-a1", workflow_id="wf", instance_id=run, step_id="only", outcome="succeeded"
        )
    )


def test_each_message_is_its_runs_hop_and_the_others_are_not() -> None:
    profile = load()
    watch = profile.BusWatch(nc=None, topology=Topology(namespace="t"))
    watch.note("trigger", "start_published", start("r1"), 10.0)
    watch.note("trigger", "start_published", encode(WorkflowChanged(workflow_id="wf")), 10.5)
    watch.note("work", "work_published", work("r1"), 11.0)
    watch.note(
        "event",
        "result_published",
        encode(
            AttemptStarted(
                attempt_id="r1-a1",
                workflow_id="wf",
                instance_id="r1",
                step_id="only",
                executor="e",
                started_at=1.0,
            )
        ),
        11.5,
    )
    watch.note("event", "result_published", result("r1"), 12.0)
    watch.note("work", "work_published", work("r1"), 13.0)  # published again: the first copy's time stays
    watch.note("work", "work_published", b"not json", 14.0)
    assert watch.published == {
        "r1": {"start_published": 10.0, "work_published": 11.0, "result_published": 12.0}
    }


def test_the_bus_hops_add_up_to_the_round_trip() -> None:
    profile = load()
    row: dict[str, Any] = {
        "id": "r1",
        "requested_at": 100.001,
        "run_started_at": 100.004,
        "dispatched_at": 100.0045,
        "attempt_started_at": 100.008,
        "attempt_ended_at": 100.0081,
        "run_ended_at": 100.011,
    }
    published = {"r1": {"start_published": 100.002, "work_published": 100.006, "result_published": 100.009}}
    hops = profile.hops_of([row], {"r1": 100.0}, published, profile.BUS_HOPS)
    ms = {label: round(values[0], 3) for label, values in hops.items()}
    assert ms == {
        "client -> API accepted": 1.0,
        "API -> start published": 1.0,
        "start published -> run started": 2.0,
        "run started -> work dispatched": 0.5,
        "dispatched -> work published": 1.5,
        "work published -> executor started": 2.0,
        "step body (noop)": 0.1,
        "step ended -> result published": 0.9,
        "result published -> run ended": 2.0,
        "round trip: sent -> run ended": 11.0,
    }
    parts = [v for label, v in ms.items() if label != "round trip: sent -> run ended"]
    assert round(sum(parts), 3) == ms["round trip: sent -> run ended"]


def test_a_run_the_subscriber_missed_leaves_only_those_hops_out() -> None:
    profile = load()
    row = {
        "id": "r2",
        "requested_at": 1.0,
        "run_started_at": 2.0,
        "dispatched_at": 2.0,
        "attempt_started_at": 3.0,
        "attempt_ended_at": 3.0,
        "run_ended_at": 4.0,
    }
    hops = profile.hops_of([row], {"r2": 0.5}, {}, profile.BUS_HOPS)
    assert "API -> start published" not in hops
    assert hops["round trip: sent -> run ended"] == [3500.0]
