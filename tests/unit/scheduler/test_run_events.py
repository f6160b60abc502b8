"""The lifecycle events a batch records (``scheduler/run_events.py``), without services: which changes
become events, with which ids, subjects and sequence numbers."""

from __future__ import annotations

from datetime import UTC, datetime

from legato.bus.topology import Topology
from legato.protocol.events import RunEvent, StepEvent, decode_event
from legato.scheduler.run_events import record
from legato.scheduler.state import InstanceState, StepState, UnitOfWork

TOPO = Topology("ns", 4)


def run(status: str, *, new: bool, body_path: str | None = None, seq: int = 0) -> InstanceState:
    return InstanceState(
        id="r1",
        workflow_id="wf.a",
        version=1,
        trigger_key="k",
        trigger={"kind": "api"},
        status=status,
        params={"secret": "hunter2"},
        run_params={"secret": "hunter2"},
        created_at=datetime.now(UTC),
        body_path=body_path,
        notify_seq=seq,
        new=new,
    )


def events(uow: UnitOfWork, inst: InstanceState | None = None) -> list[tuple[str, RunEvent | StepEvent]]:
    record(uow, TOPO, lambda iid: inst)
    out = [(m.subject, decode_event(m.payload)) for m in uow.outbox]
    for m, (_, e) in zip(uow.outbox, out, strict=True):
        assert m.msg_id == e.event_id
        assert b"hunter2" not in m.payload
    uow.outbox.clear()
    return out


def test_a_new_run_publishes_each_committed_status_once_and_never_created() -> None:
    uow = UnitOfWork()
    inst = run("created", new=True)
    inst.status = "queued"
    inst.status = "running"
    uow.touch_instance(inst)
    got = events(uow)
    assert [(e.previous_status, e.status, e.seq, e.event_id) for _, e in got] == [
        (None, "queued", 1, "run:r1:1"),
        ("queued", "running", 2, "run:r1:2"),
    ]
    assert [s for s, _ in got] == ["ns.legato.notify.run.wf~a.queued", "ns.legato.notify.run.wf~a.running"]
    assert inst.notify_seq == 2
    # Flushed again without a change: nothing more.
    uow.touch_instance(inst)
    assert events(uow) == []
    inst.status = "succeeded"
    uow.touch_instance(inst)
    [(_, end)] = events(uow)
    assert (end.previous_status, end.status, end.seq) == ("running", "succeeded", 3)


def test_a_restart_continues_the_loaded_runs_sequence() -> None:
    uow = UnitOfWork()
    inst = run("failed", new=False, seq=3)  # as loaded from its row
    inst.run_number = 2
    inst.status = "created"
    inst.status = "queued"
    uow.touch_instance(inst)
    [(_, e)] = events(uow)
    assert (e.previous_status, e.status, e.seq, e.event_id, e.run_number) == (
        "failed",
        "queued",
        4,
        "run:r1:4",
        2,
    )


def test_steps_get_their_own_sequence_and_their_runs_workflow() -> None:
    uow = UnitOfWork()
    inst = run("running", new=False, seq=2)
    st = StepState(instance_id="r1", step_id="s", status="queued", attempts=1, new=True)
    st.status = "running"
    st.status = "retrying"
    uow.touch_step(st)
    got = events(uow, inst)
    assert [(e.previous_status, e.status, e.seq) for _, e in got] == [
        (None, "queued", 1),
        ("queued", "running", 2),
        ("running", "retrying", 3),
    ]
    assert all(isinstance(e, StepEvent) and e.step_id == "s" and e.attempt == 1 for _, e in got)
    assert got[0][0] == "ns.legato.notify.step.wf~a.queued"
    assert got[-1][1].event_id == "step:r1:s:3"


def test_inline_iterations_publish_nothing() -> None:
    uow = UnitOfWork()
    child = run("created", new=True, body_path="loop")
    child.status = "running"
    uow.touch_instance(child)
    st = StepState(instance_id="r1", step_id="s", status="queued", new=True)
    uow.touch_step(st)
    assert events(uow, child) == []
