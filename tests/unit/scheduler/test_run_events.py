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
    """A new run, or one as loaded from its row (published_status = the stored status)."""
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
        published_status=None if new else status,
        new=new,
    )


def events(uow: UnitOfWork, inst: InstanceState | None = None) -> list[tuple[str, RunEvent | StepEvent]]:
    record(uow, TOPO, "wf.a", lambda iid: inst)
    out = [(m.subject, decode_event(m.payload)) for m in uow.events]
    for m, (_, e) in zip(uow.events, out, strict=True):
        assert m.msg_id == e.event_id
        assert b"hunter2" not in m.payload
    uow.events.clear()
    return out


def test_a_new_run_publishes_each_committed_status_once_and_never_created() -> None:
    uow = UnitOfWork()
    inst = run("created", new=True)
    uow.touch_instance(inst)
    assert events(uow) == []  # still created at flush: not committed as anything yet
    inst.status = "queued"
    uow.touch_instance(inst)
    [(subject, first)] = events(uow)
    assert (first.previous_status, first.status, first.seq, first.event_id) == (None, "queued", 1, "run:r1:1")
    assert subject == "ns.legato.notify.run.wf~a.queued"
    # Flushed again without a change: nothing more.
    uow.touch_instance(inst)
    assert events(uow) == []
    # Two changes inside one batch: only the committed one is an event.
    inst.status = "running"
    inst.status = "succeeded"
    uow.touch_instance(inst)
    [(_, end)] = events(uow)
    assert (end.previous_status, end.status, end.seq) == ("queued", "succeeded", 2)
    assert inst.notify_seq == 2


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
    uow.touch_step(st)
    got = events(uow, inst)
    st.status = "running"
    uow.touch_step(st)
    got += events(uow, inst)
    st.status = "retrying"
    uow.touch_step(st)
    got += events(uow, inst)
    assert [(e.previous_status, e.status, e.seq) for _, e in got] == [
        (None, "queued", 1),
        ("queued", "running", 2),
        ("running", "retrying", 3),
    ]
    assert all(isinstance(e, StepEvent) and e.step_id == "s" and e.attempt == 1 for _, e in got)
    assert got[0][0] == "ns.legato.notify.step.wf~a.queued"
    assert got[-1][1].event_id == "step:r1:s:3"


def test_a_batch_orders_run_starts_then_steps_then_run_ends() -> None:
    uow = UnitOfWork()
    ending = run("running", new=False, seq=2)
    starting = run("created", new=True)
    starting.id = "r2"
    starting.status = "running"
    ending.status = "succeeded"
    uow.touch_instance(ending)
    uow.touch_instance(starting)
    uow.touch_step(StepState(instance_id="r2", step_id="s", status="queued", new=True))
    got = events(uow, starting)
    assert [(type(e).__name__, e.instance_id, e.status) for _, e in got] == [
        ("RunEvent", "r2", "running"),
        ("StepEvent", "r2", "queued"),
        ("RunEvent", "r1", "succeeded"),
    ]


def test_inline_iterations_publish_nothing() -> None:
    uow = UnitOfWork()
    child = run("created", new=True, body_path="loop")
    child.status = "running"
    uow.touch_instance(child)
    st = StepState(instance_id="r1", step_id="s", status="queued", new=True)
    uow.touch_step(st)
    assert events(uow, child) == []
