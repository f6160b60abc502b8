"""Names of every stream, subject and consumer, in one place.

An optional namespace prefixes them all so several Legato installs (or test cases) share one NATS.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass


def partition_of(workflow_id: str, partitions: int) -> int:
    """The scheduler partition that owns a workflow: a stable hash, the same in every process."""
    return zlib.crc32(workflow_id.encode()) % partitions


def subject_token(value: str) -> str:
    """A workflow id as one subject token (ids are [a-z0-9_.-]; dots would split tokens)."""
    return value.replace(".", "~")


@dataclass(frozen=True)
class Topology:
    """Every stream, subject, consumer and bucket name of one install (its namespace and partition count)."""

    namespace: str = ""
    partitions: int = 8

    @property
    def _s(self) -> str:
        return f"{self.namespace}." if self.namespace else ""

    @property
    def _n(self) -> str:
        return f"{self.namespace.upper().replace('-', '_')}_" if self.namespace else ""

    # Streams
    @property
    def triggers_stream(self) -> str:
        return f"{self._n}LEGATO_TRIGGERS"

    @property
    def events_stream(self) -> str:
        return f"{self._n}LEGATO_EVENTS"

    @property
    def work_stream(self) -> str:
        return f"{self._n}LEGATO_WORK"

    @property
    def signals_stream(self) -> str:
        return f"{self._n}LEGATO_SIGNALS"

    @property
    def deadletter_stream(self) -> str:
        return f"{self._n}LEGATO_DEADLETTERS"

    @property
    def notify_stream(self) -> str:
        """Run lifecycle events (``legato.notify.>`` of every namespace). One stream per NATS account,
        not per namespace, so the roles that may read events are granted it by name
        (``security/permissions.py``); a reader's filter subject carries its namespace."""
        return "LEGATO_NOTIFY"

    @property
    def attempts_bucket(self) -> str:
        """JetStream KV bucket of the executors' attempt claims and kept results."""
        return f"{self._n}LEGATO_ATTEMPTS"

    @property
    def streams(self) -> tuple[str, str, str, str]:
        return (self.triggers_stream, self.events_stream, self.work_stream, self.signals_stream)

    # Subjects
    def trigger_subject(self, workflow_id: str) -> str:
        p = partition_of(workflow_id, self.partitions)
        return f"{self._s}legato.trigger.{p}.{subject_token(workflow_id)}"

    def trigger_partition_filter(self, partition: int) -> str:
        return f"{self._s}legato.trigger.{partition}.>"

    def event_subject(self, workflow_id: str) -> str:
        p = partition_of(workflow_id, self.partitions)
        return f"{self._s}legato.event.{p}.{subject_token(workflow_id)}"

    def event_partition_filter(self, partition: int) -> str:
        return f"{self._s}legato.event.{partition}.>"

    def work_subject(self, queue: str) -> str:
        """A queue's lead lane: each workflow's first few attempts waiting in the queue (served first)."""
        return f"{self._s}legato.work.{queue}"

    def work_bulk_subject(self, queue: str) -> str:
        """A queue's bulk lane: a workflow's attempts beyond those in the lead lane (a fan-out's rest)."""
        return f"{self._s}legato.work.{queue}.bulk"

    def deadletter_subject(self, service: str) -> str:
        """Dead letters of a database-less service, for a stateful one to store."""
        return f"{self._s}legato.deadletter.{service}"

    def signal_subject(self, name: str) -> str:
        return f"{self._s}legato.signal.{name}"

    @property
    def signal_wait_subject(self) -> str:
        """Internal: wait registrations from the scheduler (``_legato`` is never a user signal name)."""
        return f"{self._s}legato.signal._legato.wait"

    @property
    def signal_prefix(self) -> str:
        return f"{self._s}legato.signal."

    def signal_name(self, subject: str) -> str:
        """The signal name a subject under ``signal_prefix`` carries."""
        return subject[len(self.signal_prefix) :]

    def api_subject(self, resource: str, verb: str) -> str:
        return f"{self._s}legato.api.{resource}.{verb}"

    def cancel_subject(self, attempt_id: str) -> str:
        return f"{self._s}legato.control.cancel.{attempt_id}"

    @property
    def cancel_wildcard(self) -> str:
        return f"{self._s}legato.control.cancel.*"

    @property
    def executor_heartbeat_subject(self) -> str:
        """Core NATS: each executor says every second that it lives and which attempts it runs."""
        return f"{self._s}legato.control.heartbeat"

    def notify_run_subject(self, workflow_id: str, status: str) -> str:
        """Where a run's status change is published (``docs/events.md``)."""
        return f"{self._s}legato.notify.run.{subject_token(workflow_id)}.{status}"

    def notify_step_subject(self, workflow_id: str, status: str) -> str:
        """Where a step's status change is published (``docs/events.md``)."""
        return f"{self._s}legato.notify.step.{subject_token(workflow_id)}.{status}"

    def notify_filter(self, kind: str, workflow_id: str | None = None, status: str | None = None) -> str:
        """The subject filter of ``kind`` (``run`` or ``step``) events, of one workflow and/or status."""
        wf = "*" if workflow_id is None else subject_token(workflow_id)
        return f"{self._s}legato.notify.{kind}.{wf}.{status or '*'}"

    def subject_prefix(self, kind: str) -> str:
        return f"{self._s}legato.{kind}."

    # Durable consumer names
    def consumer_name(self, kind: str, partition: int | None = None) -> str:
        base = f"{self._n}{kind}".replace(".", "_")
        return base if partition is None else f"{base}_p{partition}"

    def scheduler_triggers_consumer(self, partition: int) -> str:
        """The durable consumer the scheduler applies a partition's triggers with (the API reads its
        backlog: bus/backlog.py)."""
        return self.consumer_name("scheduler_triggers", partition)
