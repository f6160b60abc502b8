"""Lifecycle events of a batch: every status change of a run or a step, into the batch's outbox.

Called by the actor before each flush (``actors.py``): the status changes the engine made are
remembered on the states themselves (``state.TrackedStatus``); this turns those of the runs and steps
the batch touched into ``RunEvent`` / ``StepEvent`` outbox rows, written in the same transaction as the
changes. So an event exists iff its change committed, and each gets the id
``run:<instance>:<seq>`` / ``step:<instance>:<step>:<seq>`` from the run's or step's own change counter
(``notify_seq``, written with the row): a republished outbox row has the same ``Nats-Msg-Id`` and
JetStream drops it.

A run never commits as ``created`` (it is queued or started in the same transaction), so ``created``
is not an event. Inline iterations of a foreach or loop (runs with a ``body_path``) publish nothing:
their parent step's events say how the step goes, and a foreach may have 100,000 of them.
"""

from __future__ import annotations

from collections.abc import Callable

from legato.bus.publisher import OutgoingMessage
from legato.bus.topology import Topology
from legato.core.reasons import Reason, code_of
from legato.protocol.events import RunEvent, StepEvent, encode_event, run_event_id, step_event_id
from legato.scheduler.state import InstanceState, StepState, UnitOfWork, status_changes, status_published

# A run's statuses that are never committed, so never published.
_TRANSIENT_RUN = frozenset({"created", "pending"})


def _statuses(obj: InstanceState | StepState, skip: frozenset[str]) -> list[tuple[str | None, str, float]]:
    """(previous, status, at) of each change to publish, oldest first."""
    published, changes = status_changes(obj)
    previous: str | None = None if obj.new and obj.notify_seq == 0 else published
    out: list[tuple[str | None, str, float]] = []
    steps = changes if previous is not None else [(published, obj.created_at.timestamp()), *changes]
    for status, at in steps:
        if status in skip or status == previous:
            continue
        out.append((previous, status, at))
        previous = status
    return out


def _reason(reason: Reason | None) -> str | None:
    return code_of(reason) if reason is not None else None


def record(uow: UnitOfWork, topology: Topology, run_of: Callable[[str], InstanceState | None]) -> None:
    """Append the events of the status changes of every run and step ``uow`` touched to its outbox and
    advance their ``notify_seq``, in the order the changes happened. ``run_of`` finds a step's run (the
    batch's or the actor's)."""
    out: list[tuple[float, OutgoingMessage]] = []
    for inst in uow.instances.values():
        changes = _statuses(inst, _TRANSIENT_RUN)
        status_published(inst)
        if inst.body_path:
            continue
        for previous, status, at in changes:
            inst.notify_seq += 1
            event = RunEvent(
                event_id=run_event_id(inst.id, inst.notify_seq),
                workflow_id=inst.workflow_id,
                instance_id=inst.id,
                status=status,
                previous_status=previous,
                at=at,
                seq=inst.notify_seq,
                run_number=inst.run_number,
                reason=_reason(inst.reason) if status == inst.status else None,
                parent_instance_id=inst.parent_instance_id,
            )
            subject = topology.notify_run_subject(inst.workflow_id, status)
            out.append((at, OutgoingMessage(subject, encode_event(event), msg_id=event.event_id)))
    for st in uow.steps.values():
        changes = _statuses(st, frozenset())
        status_published(st)
        if not changes:
            continue
        run = run_of(st.instance_id)
        if run is None or run.body_path:
            continue
        for previous, status, at in changes:
            st.notify_seq += 1
            step_event = StepEvent(
                event_id=step_event_id(st.instance_id, st.step_id, st.notify_seq),
                workflow_id=run.workflow_id,
                instance_id=st.instance_id,
                step_id=st.step_id,
                attempt=st.attempts,
                status=status,
                previous_status=previous,
                at=at,
                seq=st.notify_seq,
                run_number=run.run_number,
                reason=_reason(st.reason) if status == st.status else None,
            )
            subject = topology.notify_step_subject(run.workflow_id, status)
            out.append((at, OutgoingMessage(subject, encode_event(step_event), msg_id=step_event.event_id)))
    out.sort(key=lambda item: item[0])  # stable: one run's or step's changes keep their order
    uow.outbox.extend(message for _at, message in out)
