"""Lifecycle events of a batch: each committed status change of a run or a step, into the batch's outbox.

Called by the actor before each flush (``actors.py``). Each run and step remembers the status its
last event said (``published_status``: the stored status when it was loaded, None when it is new);
a touched run or step whose status differs gets one ``RunEvent`` / ``StepEvent`` outbox row, written
in the same transaction as the row it describes. So an event exists iff its change committed, and
says exactly what Postgres went from and to; a status set and left again inside one batch was never
committed and is not an event. Each event's id is ``run:<instance>:<seq>`` /
``step:<instance>:<step>:<seq>`` from the run's or step's own counter (``notify_seq``, written with
the row): a republished outbox row has the same ``Nats-Msg-Id`` and JetStream drops it.

Not events: a run's ``created`` (never committed: it is queued or started in the same transaction),
and inline iterations of a foreach or loop (runs with a ``body_path``): their parent step's events say
how the step goes, and a foreach may have 100,000 of them. The engine knows nothing of this module.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from legato.bus.publisher import OutgoingMessage
from legato.bus.topology import Topology
from legato.core.reasons import code_of
from legato.core.statuses import TERMINAL_INSTANCE
from legato.protocol.events import RunEvent, StepEvent, encode_event, run_event_id, step_event_id
from legato.scheduler.state import InstanceState, UnitOfWork

# A run's statuses that are never committed, so never published.
_UNCOMMITTED_RUN = frozenset({"created", "pending"})


def record(
    uow: UnitOfWork, topology: Topology, workflow_id: str, run_of: Callable[[str], InstanceState | None]
) -> None:
    """Append an event for each run and step ``uow`` touched whose status changed since its last
    event, and advance their ``notify_seq``. ``workflow_id``: the actor's (every run it holds is of
    it); ``run_of`` finds a step's run (the batch's or the actor's; a step of an ended run the batch
    did not touch has none: its event says run number 0, unknown). Order within the batch: runs that
    began or wait, then steps, then runs that ended."""
    at = time.time()
    starts: list[OutgoingMessage] = []
    ends: list[OutgoingMessage] = []
    for inst in uow.instances.values():
        status = inst.status
        if status == inst.published_status or status in _UNCOMMITTED_RUN:
            continue
        previous, inst.published_status = inst.published_status, status
        if inst.body_path:
            continue
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
            reason=code_of(inst.reason) if inst.reason is not None else None,
            parent_instance_id=inst.parent_instance_id,
        )
        message = OutgoingMessage(
            topology.notify_run_subject(inst.workflow_id, status), encode_event(event), msg_id=event.event_id
        )
        (ends if status in TERMINAL_INSTANCE else starts).append(message)
    steps: list[OutgoingMessage] = []
    for st in uow.steps.values():
        status = st.status
        if status == st.published_status:
            continue
        previous, st.published_status = st.published_status, status
        run = run_of(st.instance_id)
        if run is not None and run.body_path:
            continue
        st.notify_seq += 1
        step_event = StepEvent(
            event_id=step_event_id(st.instance_id, st.step_id, st.notify_seq),
            workflow_id=workflow_id,
            instance_id=st.instance_id,
            step_id=st.step_id,
            attempt=st.attempts,
            status=status,
            previous_status=previous,
            at=at,
            seq=st.notify_seq,
            run_number=run.run_number if run is not None else 0,
            reason=code_of(st.reason) if st.reason is not None else None,
        )
        steps.append(
            OutgoingMessage(
                topology.notify_step_subject(workflow_id, status),
                encode_event(step_event),
                msg_id=step_event.event_id,
            )
        )
    uow.events.extend(starts)
    uow.events.extend(steps)
    uow.events.extend(ends)
