"""Run lifecycle events: one small message per status change of a run or a step (``docs/events.md``).

The scheduler writes each change's event into its outbox in the transaction that commits the change,
so an event exists if and only if the change committed; the relay publishes it on the notify stream
(``Topology.notify_stream``) under ``<ns.>legato.notify.run.<workflow>.<status>`` or
``<ns.>legato.notify.step.<workflow>.<status>`` with ``Nats-Msg-Id`` = ``event_id``, so a republished
row is dropped by JetStream. Events carry ids, statuses, times and a reason code; never params, outputs,
errors or anything else a run's author may have put a secret in.

Schema version 1 (``v``). Fields are only ever added; a reader ignores the ones it does not know
(msgspec does), so a newer scheduler stays readable.
"""

from __future__ import annotations

from typing import Literal

import msgspec

EVENTS_VERSION = 1


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    v: int = EVENTS_VERSION
    """Schema version of this event (1)."""
    event_id: str
    """Unique per change, also its ``Nats-Msg-Id``: ``run:<instance>:<seq>`` or
    ``step:<instance>:<step>:<seq>``."""
    workflow_id: str
    """The run's workflow."""
    instance_id: str
    """The run."""
    status: str
    """The status after the change (``InstanceStatus`` / ``StepStatus`` values)."""
    previous_status: str | None = None
    """The status before the change; None when the run or step was created with this status."""
    at: float
    """Epoch seconds when the scheduler wrote the change, just before the commit of the transaction
    that made it (a run's ``ended_at`` is a little earlier: when that batch ended it)."""
    seq: int
    """Change number of this run (run events) or of this step of this run (step events): 1, 2, 3 …
    without gaps, so a reader can tell a missing or repeated change."""
    run_number: int = 1
    """The run's number: 2 and more after an operator restarted it."""
    reason: str | None = None
    """The code of the reason of the new status (``core/reasons.py``: ``queued``, ``superseded``,
    ``waiting_for_permit`` …), if it has one."""
    stream_seq: int = 0
    """The event's sequence in the notify stream, set by the reader (``legato.client.events``), 0 on
    the wire: resume after it with ``since=event.stream_seq``."""


class RunEvent(_Event, tag="run", frozen=True, kw_only=True):
    """A run's status changed (``legato.notify.run.<workflow>.<status>``)."""

    parent_instance_id: str | None = None
    """The parent run of a child run (a subworkflow, or a foreach over another workflow)."""


class StepEvent(_Event, tag="step", frozen=True, kw_only=True):
    """A step's status changed (``legato.notify.step.<workflow>.<status>``)."""

    step_id: str
    """The step."""
    attempt: int = 0
    """The step's attempts so far (its current attempt's number; 0 before the first)."""


NotifyEvent = RunEvent | StepEvent
"""Any event of the notify stream (tagged by ``type``: ``run`` or ``step``)."""

EventKind = Literal["run", "step"]

_decoder: msgspec.json.Decoder[NotifyEvent] = msgspec.json.Decoder(NotifyEvent)
_encoder = msgspec.json.Encoder()


def encode_event(event: NotifyEvent) -> bytes:
    """The event as its JSON payload."""
    return _encoder.encode(event)


def decode_event(data: bytes) -> NotifyEvent:
    """Decode one event payload (``msgspec.ValidationError`` / ``DecodeError`` if it is not one)."""
    return _decoder.decode(data)


def run_event_id(instance_id: str, seq: int) -> str:
    """The id (and ``Nats-Msg-Id``) of a run's ``seq``-th change."""
    return f"run:{instance_id}:{seq}"


def step_event_id(instance_id: str, step_id: str, seq: int) -> str:
    """The id (and ``Nats-Msg-Id``) of the ``seq``-th change of a step of a run."""
    return f"step:{instance_id}:{step_id}:{seq}"
