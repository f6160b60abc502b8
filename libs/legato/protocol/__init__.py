"""Wire messages between Legato services: frozen msgspec Structs, tagged unions, a schema version each.

Subjects and streams:
- ``legato.trigger.<p>.<workflow>`` (LEGATO_TRIGGERS) carries ``TriggerMessage`` to the scheduler;
- ``legato.event.<p>.<workflow>`` (LEGATO_EVENTS) carries ``EventMessage`` (executor -> scheduler);
- ``legato.work.<queue>`` (LEGATO_WORK) carries ``WorkItem`` (scheduler -> executor);
- ``legato.deadletter.<service>`` (LEGATO_DEADLETTERS) carries ``DeadLetterReport`` from database-less
  services (the executor) to whichever stateful service stores it in ``dead_letter``;
- ``legato.control.cancel.<attempt>`` (core NATS) carries ``CancelAttempt``.
"""

from legato.protocol.messages import (
    PROTOCOL_VERSION,
    ActionRequest,
    AttemptFinished,
    AttemptStarted,
    CancelAttempt,
    ChildFinished,
    DeadLetterReport,
    EventMessage,
    SignalWaitRegistered,
    SignalWaitSatisfied,
    SignalWaitsCancelled,
    StartRun,
    TriggerInfo,
    TriggerMessage,
    WorkflowChanged,
    WorkItem,
    decode_event,
    decode_trigger,
    decode_work,
    encode,
)

__all__ = [
    "PROTOCOL_VERSION",
    "ActionRequest",
    "AttemptFinished",
    "AttemptStarted",
    "CancelAttempt",
    "ChildFinished",
    "DeadLetterReport",
    "EventMessage",
    "SignalWaitRegistered",
    "SignalWaitSatisfied",
    "SignalWaitsCancelled",
    "StartRun",
    "TriggerInfo",
    "TriggerMessage",
    "WorkItem",
    "WorkflowChanged",
    "decode_event",
    "decode_trigger",
    "decode_work",
    "encode",
]
