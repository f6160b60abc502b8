"""Idempotent provisioning of Legato's five streams and its durable pull consumers."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import (
    APIError,
    BadRequestError,
    BucketNotFoundError,
    NotFoundError,
    ServiceUnavailableError,
)

from legato.bus.topology import Topology
from legato.telemetry import get_logger

log = get_logger("legato.bus")

DUPLICATE_WINDOW = 120.0  # JetStream's own dedup: a second line of defence, not the guarantee
SIGNAL_MAX_AGE = 30 * 24 * 3600.0
MAX_MSG_SIZE = 8 * 1024 * 1024
# Signals come from outside (any holder of publisher credentials): one is small, and the stream is
# bounded; when full, new signals are refused (the publisher gets an error) rather than unprocessed
# ones silently dropped.
SIGNAL_MAX_MSG_SIZE = 256 * 1024
SIGNAL_MAX_BYTES = 1024 * 1024 * 1024


# Run lifecycle events (docs/events.md): kept for a week, at most 10 million or 1 GiB, oldest dropped
# first. Subscribers catch up within that; the database keeps every run's history for good.
NOTIFY_MAX_AGE = 7 * 24 * 3600.0
NOTIFY_MAX_MSGS = 10_000_000
NOTIFY_MAX_BYTES = 1024 * 1024 * 1024
NOTIFY_MAX_MSG_SIZE = 64 * 1024


@dataclass(frozen=True)
class NotifyRetention:
    """How much of the lifecycle events the notify stream keeps (``LEGATO_NOTIFY_MAX_*``)."""

    max_age: float = NOTIFY_MAX_AGE
    max_msgs: int = NOTIFY_MAX_MSGS
    max_bytes: int = NOTIFY_MAX_BYTES


# How long a starting service waits for JetStream to answer before it gives up: a cluster that has
# just elected its metadata leader may still time out creating replicated streams for a few seconds.
SETTLE_TIMEOUT = 60.0

T = TypeVar("T")


# The executors' attempt claims (executor/claims.py) expire after this long (``LEGATO_ATTEMPT_CLAIM_TTL``).
# Each claim kept costs nats-server ~0.5 KB of memory and ~0.23 KB of disk (docs/performance.md), so the
# bucket holds about the attempt rate times this. An executor runs no work item older than the horizon
# (``claim_horizon``): every copy of an item it could still run finds the claim of the copy that ran.
CLAIM_TTL = 25 * 3600.0
# What the horizon leaves between it and the TTL, for clocks that differ between hosts (the scheduler
# stamps a work item's dispatch, the executor compares, nats-server expires the claim).
CLAIM_CLOCK_MARGIN = 3600.0


def claim_horizon(ttl: float) -> float:
    """How old (since its dispatch) a work item may be and still run, under claims kept ``ttl`` seconds:
    the TTL less an hour for clock differences, or half the TTL when that is shorter (tests)."""
    return ttl - min(CLAIM_CLOCK_MARGIN, ttl / 2)


class ProvisioningError(RuntimeError):
    """A stream exists with a configuration that cannot be changed in place."""


class NotProvisioned(RuntimeError):
    """A stream or bucket a process needs does not exist yet (a stateful service creates it)."""


def transient(exc: BaseException) -> bool:
    """JetStream is there but not answering yet (no meta leader, stream leader election, reconnect)."""
    if isinstance(exc, ServiceUnavailableError | NotProvisioned):
        return True
    if isinstance(exc, APIError):
        # 10008: "JetStream system temporarily unavailable"; 503 without a code: no leader yet.
        return exc.code == 503 or exc.err_code == 10008
    return isinstance(
        exc,
        nats.errors.TimeoutError
        | TimeoutError
        | nats.errors.NoRespondersError
        | nats.errors.ConnectionReconnectingError,
    )


async def settled(op: Callable[[], Awaitable[T]], what: str, *, timeout: float = SETTLE_TIMEOUT) -> T:
    """Run a provisioning step, retrying while JetStream is transiently unavailable, up to ``timeout``.

    Every provisioning step is idempotent, so a retry after a timed-out request that did succeed on the
    server is harmless. Anything else (bad configuration, permissions) fails at once.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.2
    while True:
        try:
            return await op()
        except Exception as exc:
            if not transient(exc) or loop.time() + delay > deadline:
                raise
            log.warning("jetstream_not_ready", step=what, error=repr(exc), retry_in=delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer on one stream with one filter subject."""

    stream: str
    durable: str
    filter_subject: str
    ack_wait: float = 30.0
    max_ack_pending: int = 2000
    deliver_all: bool = True

    def config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.durable,
            name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL if self.deliver_all else DeliverPolicy.NEW,
            filter_subject=self.filter_subject,
            ack_wait=self.ack_wait,
            # Redeliveries are bounded by our consumer loop, which dead-letters with the error;
            # JetStream's own max_deliver would drop the message silently.
            max_deliver=-1,
            max_ack_pending=self.max_ack_pending,
            max_waiting=512,
        )


def stream_configs(
    topology: Topology, replicas: int = 1, notify: NotifyRetention | None = None
) -> list[StreamConfig]:
    """The JetStream stream of every kind (triggers, events, work, signals, dead letters, lifecycle
    events …) of one install."""
    keep = notify or NotifyRetention()

    def cfg(name: str, kind: str, retention: RetentionPolicy, max_age: float = 0.0) -> StreamConfig:
        untrusted = kind == "signal"
        return StreamConfig(
            name=name,
            subjects=[f"{topology.subject_prefix(kind)}>"],
            retention=retention,
            storage=StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=DUPLICATE_WINDOW,
            max_msg_size=SIGNAL_MAX_MSG_SIZE if untrusted else MAX_MSG_SIZE,
            max_bytes=SIGNAL_MAX_BYTES if untrusted else -1,
            discard=DiscardPolicy.NEW if untrusted else DiscardPolicy.OLD,
            max_age=max_age,
        )

    return [
        cfg(topology.triggers_stream, "trigger", RetentionPolicy.WORK_QUEUE),
        cfg(topology.events_stream, "event", RetentionPolicy.WORK_QUEUE),
        cfg(topology.work_stream, "work", RetentionPolicy.WORK_QUEUE),
        cfg(topology.signals_stream, "signal", RetentionPolicy.LIMITS, SIGNAL_MAX_AGE),
        cfg(topology.deadletter_stream, "deadletter", RetentionPolicy.WORK_QUEUE),
        # One notify stream per NATS account: every namespace adds its subjects (see _provision_notify).
        StreamConfig(
            name=topology.notify_stream,
            subjects=[f"{topology.subject_prefix('notify')}>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=DUPLICATE_WINDOW,
            max_msg_size=NOTIFY_MAX_MSG_SIZE,
            max_age=keep.max_age,
            max_msgs=keep.max_msgs,
            max_bytes=keep.max_bytes,
            discard=DiscardPolicy.OLD,
        ),
    ]


async def provision_streams(
    js: JetStreamContext,
    topology: Topology,
    *,
    replicas: int = 1,
    notify: NotifyRetention | None = None,
    claim_ttl: float | None = CLAIM_TTL,
) -> None:
    """Create the streams, or bring them to the wanted configuration; safe to run from every process.
    ``claim_ttl`` None: the attempts bucket is made with the default TTL if missing, and an existing
    one's is left as it is (a process that does not know the install's setting).

    Waits (bounded) while JetStream is not ready yet, as after a cluster has just formed."""
    for want in stream_configs(topology, replicas, notify):
        provision = _provision_notify if want.name == topology.notify_stream else _provision_stream
        await settled(functools.partial(provision, js, want), f"stream {want.name}")
    await settled(
        functools.partial(provision_attempts_bucket, js, topology, replicas=replicas, ttl=claim_ttl),
        f"bucket {topology.attempts_bucket}",
    )


# A work-queue stream whose messages were all acked is empty, and its file store then drops its last
# message block and makes a new one for the next message: below saturation a file created and one
# removed about every other run in each of these streams, a third of nats-server's CPU per run at 100
# starts/s (docs/performance.md). One message that no consumer takes keeps each of them from emptying.
# Its subject has two tokens after the kind's prefix: never a partition's (``<p>.<workflow>``, ``<p>``
# a number) nor a work queue's lanes (``<queue>`` and ``<queue>.bulk``), so no consumer's filter matches it.
KEEPER_SUBJECT = "keep.open"
KEPT_OPEN = ("trigger", "event", "work")
# JetStream's errors when Nats-Expected-Last-Subject-Sequence does not hold: "wrong last sequence: N"
# (10071), and the same without the number (10164), which some nats-server versions answer instead.
WRONG_LAST_SEQUENCE = (10071, 10164)


async def keep_work_queues_open(js: JetStreamContext, topology: Topology) -> int:
    """Put the one message that keeps each of the ``KEPT_OPEN`` streams from emptying, unless it is there
    already (``Nats-Expected-Last-Subject-Sequence: 0``: one ever, whoever publishes it and when).
    Returns how many it put. Only a process allowed to publish on all of them may call it (the scheduler)."""
    put = 0
    for kind in KEPT_OPEN:
        subject = f"{topology.subject_prefix(kind)}{KEEPER_SUBJECT}"
        try:
            await js.publish(subject, b"", headers={"Nats-Expected-Last-Subject-Sequence": "0"})
            put += 1
        except APIError as exc:
            if exc.err_code not in WRONG_LAST_SEQUENCE:
                raise
    return put


async def provision_attempts_bucket(
    js: JetStreamContext, topology: Topology, *, replicas: int = 1, ttl: float | None = CLAIM_TTL
) -> None:
    """Create the executors' attempt-claims bucket if missing, or set its TTL to ``ttl`` (None: leave
    an existing bucket's). A stateful service does it: executors may not create or change streams
    (docs/security.md). Executors read the TTL from the bucket itself, so theirs and the bucket's never
    differ for long (``executor/claims.py``: re-read every minute)."""
    try:
        await js.key_value(topology.attempts_bucket)
    except BucketNotFoundError:
        config = KeyValueConfig(
            bucket=topology.attempts_bucket,
            description="Legato executor: attempts started, and their results",
            history=1,
            ttl=CLAIM_TTL if ttl is None else ttl,
            storage=StorageType.FILE,
            replicas=replicas,
            max_value_size=MAX_MSG_SIZE,
        )
        try:
            await js.create_key_value(config)
            log.info("bucket_created", bucket=topology.attempts_bucket)
            return
        except BadRequestError:
            await js.key_value(topology.attempts_bucket)  # another process created it first
    if ttl is not None:
        await _set_claim_ttl(js, topology, ttl)


def bucket_stream(bucket: str) -> str:
    """The JetStream stream that holds KV bucket ``bucket``."""
    return f"KV_{bucket}"


async def _set_claim_ttl(js: JetStreamContext, topology: Topology, ttl: float) -> None:
    """The bucket's TTL (its stream's max_age) as configured. Shortening it drops the claims older than
    the new TTL at once; executors follow within a minute (docs/architecture.md, "Attempt claims")."""
    info = await js.stream_info(bucket_stream(topology.attempts_bucket))
    have = info.config.max_age or 0.0
    if abs(have - ttl) < 0.001:
        return
    # As nats-py makes a bucket: JetStream's usual 2-minute duplicate window, never longer than the TTL.
    window = min(DUPLICATE_WINDOW, ttl)
    await js.update_stream(dataclasses.replace(info.config, max_age=ttl, duplicate_window=window))
    log.warning("bucket_ttl_changed", bucket=topology.attempts_bucket, ttl_was=have, ttl=ttl)


async def await_streams(js: JetStreamContext, topology: Topology, *, timeout: float = SETTLE_TIMEOUT) -> None:
    """Wait (bounded) until the streams and the bucket exist, for a process that may not create them."""

    async def present(stream: str) -> None:
        try:
            await js.stream_info(stream)
        except NotFoundError:
            raise NotProvisioned(f"stream {stream} does not exist yet") from None

    for stream in (topology.work_stream, topology.events_stream, topology.deadletter_stream):
        await settled(functools.partial(present, stream), f"stream {stream}", timeout=timeout)
    await settled(
        functools.partial(present, bucket_stream(topology.attempts_bucket)),
        f"bucket {topology.attempts_bucket}",
        timeout=timeout,
    )


async def _provision_stream(js: JetStreamContext, want: StreamConfig) -> None:
    assert want.name is not None
    try:
        info = await js.stream_info(want.name)
    except NotFoundError:
        try:
            await js.add_stream(want)
            log.info("stream_created", stream=want.name)
            return
        except BadRequestError:
            info = await js.stream_info(want.name)  # another process created it first
    have = info.config
    if have.retention != want.retention:
        raise ProvisioningError(
            f"stream {want.name} has retention {have.retention}, wants {want.retention}: "
            "delete it (nats stream rm) and restart to recreate"
        )
    if (
        have.subjects != want.subjects
        or have.duplicate_window != want.duplicate_window
        or have.num_replicas != want.num_replicas
        or have.max_age != want.max_age
        or have.max_msg_size != want.max_msg_size
        or have.max_bytes != want.max_bytes
        or have.max_msgs != want.max_msgs
        or have.discard != want.discard
    ):
        await js.update_stream(want)
        log.info("stream_updated", stream=want.name)


async def _provision_notify(js: JetStreamContext, want: StreamConfig) -> None:
    """The notify stream is shared by every namespace of the account (so roles can be granted it by
    name), and a subject starting with a wildcard is refused, so each install adds its own
    ``<ns.>legato.notify.>`` to the stream's subjects. Two installs adding theirs at once may overwrite
    each other's update: each re-reads until its subject is there (bounded)."""
    assert want.name is not None and want.subjects
    mine = want.subjects[0]
    for _ in range(50):
        try:
            info = await js.stream_info(want.name)
        except NotFoundError:
            try:
                await js.add_stream(want)
                log.info("stream_created", stream=want.name)
                return
            except BadRequestError:
                continue  # another process created it first
        have = info.config
        subjects = list(have.subjects or [])
        if (
            mine in subjects
            and have.max_age == want.max_age
            and have.max_msgs == want.max_msgs
            and have.max_bytes == want.max_bytes
            and have.num_replicas == want.num_replicas
        ):
            return
        await js.update_stream(
            dataclasses.replace(want, subjects=subjects if mine in subjects else [*subjects, mine])
        )
        log.info("stream_updated", stream=want.name, subject=mine)
        await asyncio.sleep(random.uniform(0.0, 0.05))  # then check that no other update overwrote it
    raise ProvisioningError(f"stream {want.name}: could not add subject {mine} (concurrent updates)")


async def provision_consumer(js: JetStreamContext, spec: ConsumerSpec) -> None:
    """Create or update a durable consumer (idempotent; same config twice is a no-op)."""
    await js.add_consumer(spec.stream, spec.config())
