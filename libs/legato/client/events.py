"""Reading run lifecycle events (``docs/events.md``): subscriptions on the notify stream, and waiting
for runs to end.

``subscribe(…)`` creates a JetStream pull consumer on the notify stream filtered to the install's
subjects (a workflow, one or more statuses) and returns an ``EventSubscription``: an async iterator of
typed events (``RunEvent`` / ``StepEvent``) in stream order, each with its ``stream_seq`` so the caller
can resume after it (``since=event.stream_seq``). An event is acked when the caller asks for the next
one, so one the caller was still handling when it went away is delivered again (to the group, or to a
subscriber that resumes); a subscriber never yields a stream sequence twice.

``wait_run`` / ``wait_runs`` return when runs end: they subscribe (core NATS, no consumer) to the
run-end subjects first, then read each run's status once, which closes the race with a run that
ended before the subscription; after that they only wait for events (a safety re-read every
``recheck`` seconds covers an event lost in a reconnect).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from legato.bus.publisher import caught_up
from legato.bus.topology import Topology
from legato.core.statuses import TERMINAL_INSTANCE, InstanceStatus
from legato.protocol.events import RunEvent, StepEvent, decode_event

E = TypeVar("E", RunEvent, StepEvent)

_GROUP = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# An ephemeral subscription's consumer is removed by the server this long after its reader went away.
EPHEMERAL_IDLE = 60.0
DEFAULT_ACK_WAIT = 60.0
DEFAULT_BATCH = 256
RECHECK = 30.0
READ_CONCURRENCY = 32  # status reads in flight at once when wait_all reads many runs

Since = int | float | datetime | None
"""Where a subscription starts: None = new events only; an ``int`` = the events after that stream
sequence (the ``stream_seq`` of the last event handled); a ``datetime`` or a ``float`` (epoch seconds)
= the events stored from that time on."""


class SubscriptionError(ValueError):
    """A subscription was asked for with bad arguments (the message names the argument)."""


def _statuses(status: str | Iterable[str] | None) -> list[str | None]:
    if status is None:
        return [None]
    values = [status] if isinstance(status, str) else list(status)
    if not values or not all(isinstance(s, str) and re.fullmatch(r"[a-z_]+", s) for s in values):
        raise SubscriptionError(f"status: must be a status name or a list of them, got {status!r}")
    return list(dict.fromkeys(values))


def _deliver(since: Since) -> dict[str, Any]:
    if since is None:
        return {"deliver_policy": DeliverPolicy.NEW}
    if isinstance(since, bool):
        raise SubscriptionError(
            f"since: must be a stream sequence, a datetime or epoch seconds, got {since!r}"
        )
    if isinstance(since, int):
        if since < 0:
            raise SubscriptionError(f"since: a stream sequence must be >= 0, got {since}")
        return {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": since + 1}
    if isinstance(since, float):
        since = datetime.fromtimestamp(since, UTC)
    if isinstance(since, datetime):
        if since.tzinfo is None:
            raise SubscriptionError(f"since: a datetime must carry a timezone, got {since!r}")
        # JetStream wants RFC 3339; nats-py passes the string through.
        return {"deliver_policy": DeliverPolicy.BY_START_TIME, "opt_start_time": since.isoformat()}
    raise SubscriptionError(f"since: must be a stream sequence, a datetime or epoch seconds, got {since!r}")


class EventSubscription(Generic[E]):
    """Lifecycle events of one kind in stream order, as an async iterator (``async for event in sub``).

    Close it (``await sub.close()``, or ``async with``) when done: an ephemeral subscription deletes
    its consumer; a group's durable consumer stays, keeping the group's position.
    """

    def __init__(
        self,
        nc: Client,
        topology: Topology,
        kind: str,
        *,
        workflow: str | None = None,
        status: str | Iterable[str] | None = None,
        since: Since = None,
        group: str | None = None,
        batch: int = DEFAULT_BATCH,
        ack_wait: float = DEFAULT_ACK_WAIT,
    ) -> None:
        """Validate the arguments; ``open()`` creates the consumer."""
        if workflow is not None and (not isinstance(workflow, str) or not workflow):
            raise SubscriptionError(f"workflow: must be a workflow id, got {workflow!r}")
        if group is not None and (not isinstance(group, str) or not _GROUP.match(group)):
            raise SubscriptionError(f"group: must be 1-64 letters, digits, '-' or '_', got {group!r}")
        if not 1 <= batch <= 10_000:
            raise SubscriptionError(f"batch: must be 1..10000, got {batch}")
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.topology = topology
        self.kind = kind
        self.filters = [topology.notify_filter(kind, workflow, s) for s in _statuses(status)]
        self.deliver = _deliver(since)
        self.group = group
        self.batch = batch
        self.ack_wait = ack_wait
        self.consumer = (
            topology.consumer_name(f"notify_{kind}_{group}") if group else f"notify_{uuid.uuid4().hex}"
        )
        self._sub: JetStreamContext.PullSubscription | None = None
        self._buffer: list[Msg] = []
        self._unacked: Msg | None = None
        self._last_seq = 0
        self._closed = False

    async def open(self) -> Self:
        """Create (or, for a group, join) the consumer; events stored from then on are delivered."""
        config = ConsumerConfig(
            name=self.consumer,
            durable_name=self.consumer if self.group else None,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_ack_pending=max(1000, 4 * self.batch),
            inactive_threshold=None if self.group else EPHEMERAL_IDLE,
            max_deliver=-1,
            **self.deliver,
            **(
                {"filter_subject": self.filters[0]}
                if len(self.filters) == 1
                else {"filter_subjects": self.filters}
            ),
        )
        await self.js.add_consumer(self.topology.notify_stream, config)
        self._sub = await self.js.pull_subscribe_bind(
            consumer=self.consumer, stream=self.topology.notify_stream
        )
        return self

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> E:
        if self._sub is None:
            await self.open()
        assert self._sub is not None
        if self._unacked is not None:  # the caller is done with the previous event
            msg, self._unacked = self._unacked, None
            await msg.ack()
        while True:
            if self._closed:
                raise StopAsyncIteration
            if not self._buffer:
                try:
                    self._buffer = await self._sub.fetch(self.batch, timeout=5.0)
                except nats.errors.TimeoutError:
                    continue
                except nats.errors.ConnectionClosedError:
                    raise StopAsyncIteration from None
            msg = self._buffer.pop(0)
            seq = msg.metadata.sequence.stream
            if seq <= self._last_seq:  # a redelivery of an event this subscriber already yielded
                await msg.ack()
                continue
            try:
                event = decode_event(msg.data)
            except (msgspec.ValidationError, msgspec.DecodeError):
                await msg.term()  # not an event of a schema this client reads: never again
                continue
            self._last_seq = seq
            self._unacked = msg
            return msgspec.structs.replace(event, stream_seq=seq)  # type: ignore[return-value]

    async def close(self) -> None:
        """Stop: ack the last event yielded, unsubscribe, and delete an ephemeral consumer."""
        if self._closed:
            return
        self._closed = True
        if self._unacked is not None:
            await self._unacked.ack()
            self._unacked = None
        for msg in self._buffer:  # fetched, never yielded: back to the group (or gone with the consumer)
            await msg.nak()
        self._buffer = []
        if self._sub is not None:
            await self._sub.unsubscribe()
        if not self.group:
            try:
                await self.js.delete_consumer(self.topology.notify_stream, self.consumer)
            except (NotFoundError, nats.errors.Error):
                pass  # gone already, or the connection is: the server drops it after EPHEMERAL_IDLE

    async def __aenter__(self) -> Self:
        if self._sub is None:
            await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


async def subscribe_runs(
    nc: Client,
    topology: Topology,
    *,
    workflow: str | None = None,
    status: str | Iterable[str] | None = None,
    since: Since = None,
    group: str | None = None,
    batch: int = DEFAULT_BATCH,
) -> EventSubscription[RunEvent]:
    """Run events of a workflow (all workflows if None), of some statuses (all if None), from ``since``;
    ``group``: subscribers with the same group share the events (each event goes to one of them)."""
    sub: EventSubscription[RunEvent] = EventSubscription(
        nc, topology, "run", workflow=workflow, status=status, since=since, group=group, batch=batch
    )
    return await sub.open()


async def subscribe_steps(
    nc: Client,
    topology: Topology,
    *,
    workflow: str | None = None,
    status: str | Iterable[str] | None = None,
    since: Since = None,
    group: str | None = None,
    batch: int = DEFAULT_BATCH,
) -> EventSubscription[StepEvent]:
    """Step events, filtered and shared like ``subscribe_runs``."""
    sub: EventSubscription[StepEvent] = EventSubscription(
        nc, topology, "step", workflow=workflow, status=status, since=since, group=group, batch=batch
    )
    return await sub.open()


# ------------------------------------------------------------------ waiting for runs to end


class HasInstanceId(Protocol):
    """A start reply, a run event, or anything else naming a run (and, optionally, its workflow)."""

    @property
    def instance_id(self) -> str:
        """The run's id."""
        ...


RunRef = str | HasInstanceId
"""A run to wait for: its id, or an object with ``instance_id`` (``StartReply``, ``RunEvent``); a
``workflow_id`` on it narrows the subscription to that workflow's end subjects."""


def _ids(run: RunRef) -> tuple[str, str | None]:
    if isinstance(run, str):
        return run, None
    instance_id = getattr(run, "instance_id", None)
    if not isinstance(instance_id, str):
        raise TypeError(f"run: an instance id or an object with instance_id, got {run!r}")
    workflow = getattr(run, "workflow_id", None)
    return instance_id, workflow if isinstance(workflow, str) else None


async def wait_runs(
    nc: Client,
    topology: Topology,
    runs: Iterable[RunRef],
    status_of: Callable[[str], Awaitable[str]],
    *,
    timeout: float,
    recheck: float = RECHECK,
) -> set[str]:
    """Wait until every run ended; returns their ids. ``status_of(id)`` reads a run's status (the
    API). Raises ``TimeoutError`` naming the runs still not ended after ``timeout`` seconds."""
    pending: dict[str, str | None] = dict(_ids(r) for r in runs)
    if not pending:
        return set()
    ended: set[str] = set()
    woke = asyncio.Event()

    async def on_end(msg: Msg) -> None:
        try:
            instance_id = decode_event(msg.data).instance_id
        except (msgspec.ValidationError, msgspec.DecodeError):
            return
        if instance_id in pending:
            ended.add(instance_id)
            woke.set()

    # One workflow for all: its end subjects; else every workflow's (filtered here by run id).
    workflows = {wf for wf in pending.values()}
    workflow = next(iter(workflows)) if len(workflows) == 1 else None
    subs: list[Subscription] = []
    try:
        for status in TERMINAL_INSTANCE:
            subs.append(await nc.subscribe(topology.notify_filter("run", workflow, status), cb=on_end))
        await caught_up(nc)  # the server has the subscriptions before the statuses are read
        deadline = time.monotonic() + timeout
        unchecked = set(pending)
        while True:
            await _read_statuses(sorted(unchecked - ended), status_of, ended)
            unchecked = set()
            if ended >= set(pending):
                return set(pending)
            left = deadline - time.monotonic()
            if left <= 0:
                waiting = sorted(set(pending) - ended)
                raise TimeoutError(
                    f"{len(waiting)} run(s) not ended after {timeout}s: {', '.join(waiting[:10])}"
                    + (" …" if len(waiting) > 10 else "")
                )
            woke.clear()
            try:
                await asyncio.wait_for(woke.wait(), timeout=min(recheck, left))
            except TimeoutError:
                unchecked = set(pending) - ended  # nothing came for a while: read them once more
    finally:
        for sub in subs:
            await sub.unsubscribe()


async def _read_statuses(ids: list[str], status_of: Callable[[str], Awaitable[str]], ended: set[str]) -> None:
    """Read these runs' statuses, ``READ_CONCURRENCY`` at a time; add the ended ones to ``ended``."""
    for start in range(0, len(ids), READ_CONCURRENCY):
        chunk = ids[start : start + READ_CONCURRENCY]
        for instance_id, status in zip(chunk, await asyncio.gather(*map(status_of, chunk)), strict=True):
            if status in TERMINAL_INSTANCE:
                ended.add(instance_id)


def status_or_pending(info: dict[str, Any]) -> str:
    """A run's status from an ``instance.get`` reply."""
    return str(info.get("status") or InstanceStatus.PENDING)
