"""The one JetStream consumer loop every service uses.

Keeps pull requests standing at the server (``PullFeed``), decodes each message into a typed msgspec
value, runs the handler, and settles the message from the outcome in one place:

- handler returned            -> ack (the handler has committed its Postgres transaction by then)
- ``Retry(delay)``            -> nak(delay): try again later, not counted as a failure of the message
  (deliveries this loop settled with a Retry do not count toward ``max_deliveries``: a lease that
  moved or a busy owner is an ownership problem, never a reason to dead-letter)
- ``Poison(reason)``, or the payload does not decode -> dead-letter row + term (never retried)
- any other exception         -> nak with backoff; after ``max_deliveries`` deliveries: dead-letter + term
- cancellation (shutdown)     -> no settlement: JetStream redelivers after ack_wait

Long handlers are kept alive with ``in_progress()``; in-flight work is bounded by ``max_in_flight``.
Every outcome is counted in ``legato.consumer.handled`` (``acked``, ``retried``, ``failed``,
``dead_lettered``), with ``legato.consumer.redeliveries`` and ``legato.consumer.dead_letters`` beside.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from opentelemetry.trace import SpanKind

from legato.bus.publisher import MSG_ID_HEADER
from legato.bus.pull import PullFault, PullFeed, pull_expires
from legato.bus.streams import ConsumerSpec, provision_consumer, settled
from legato.lifecycle.component import Component
from legato.telemetry import bind_context, consume_span, get_logger, metrics

log = get_logger("legato.bus")

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class MessageDecoder(Protocol[T_co]):
    """What the loop decodes payloads with: a typed ``msgspec.json.Decoder``, or anything as strict."""

    def decode(self, buf: bytes, /) -> T_co: ...


# How many retried messages a loop remembers (so Retry naks never count toward the dead-letter limit).
MAX_RETRIES_REMEMBERED = 100_000


class Retry(Exception):
    """Raise from a handler to have the message redelivered after ``delay`` seconds."""

    def __init__(self, delay: float = 1.0, reason: str = "") -> None:
        super().__init__(reason or f"retry in {delay}s")
        self.delay = delay
        self.reason = reason


class Poison(Exception):
    """Raise from a handler when the message can never be applied; it is dead-lettered at once."""


class DeadLetterSink(Protocol):
    """Where a loop puts a message it gives up on (Postgres in stateful services, a NATS subject in the
    executor)."""

    async def dead_letter(self, record: DeadLetter) -> None: ...


@dataclass(frozen=True)
class DeadLetter:
    """A message given up on: where it came from, why, and its payload and headers as received."""

    stream: str
    consumer: str
    subject: str
    stream_seq: int
    msg_id: str | None
    headers: Mapping[str, str]
    payload: bytes
    error: str
    deliveries: int


@dataclass
class Delivery(Generic[T]):
    """One decoded message and what the handler may need of its envelope."""

    message: T
    raw: Msg
    subject: str
    headers: Mapping[str, str]
    num_delivered: int
    stream_seq: int
    msg_id: str
    started: float = field(default_factory=time.monotonic)

    async def in_progress(self) -> None:
        """Tell JetStream the handler is still working (resets ack_wait)."""
        await self.raw.in_progress()


Handler = Callable[[Delivery[T]], Awaitable[None]]


@dataclass
class ConsumerStats:
    """Counts of what one consumer loop did with its deliveries, for tests and metrics."""

    fetched: int = 0
    acked: int = 0
    naked: int = 0
    dead_lettered: int = 0
    termed: int = 0
    redelivered: int = 0
    errors: int = 0


def stream_label(stream: str) -> str:
    """A stream's name without the install's namespace prefix (``T1A2_LEGATO_WORK`` -> ``LEGATO_WORK``)."""
    _, sep, tail = stream.rpartition("LEGATO_")
    return sep + tail if sep else stream


class ConsumerLoop(Component, Generic[T]):
    """A bounded, batched pull-consumer loop with one settlement policy."""

    def __init__(
        self,
        js: JetStreamContext,
        spec: ConsumerSpec,
        decoder: MessageDecoder[T],
        handler: Handler[T],
        *,
        dead_letters: DeadLetterSink,
        batch: int = 128,
        max_in_flight: int = 512,
        max_deliveries: int = 5,
        retry_delays: tuple[float, ...] = (0.2, 1.0, 5.0, 15.0, 30.0),
        fetch_timeout: float = 1.0,
        heartbeat_interval: float | None = None,
        span_name: str | None = None,
        deliver_twice: bool = False,
    ) -> None:
        super().__init__()
        self.js = js
        self.spec = spec
        self.name = f"consumer:{spec.durable}"
        self.decoder = decoder
        self.handler = handler
        self.dead_letters = dead_letters
        self.batch = max(1, batch)
        self.max_in_flight = max(1, max_in_flight)
        self.max_deliveries = max(1, max_deliveries)
        self.retry_delays = retry_delays
        self.fetch_timeout = fetch_timeout
        self.heartbeat_interval = heartbeat_interval or max(1.0, spec.ack_wait / 3)
        self.span_name = span_name or f"process {spec.stream}"
        self.stats = ConsumerStats()
        self.stream_label = stream_label(spec.stream)
        # Testing (Settings.test_deliver_twice): apply every message twice, as if its ack was lost and
        # JetStream redelivered it, to prove handlers are idempotent end to end. Never set in production.
        self.deliver_twice = deliver_twice
        self._in_flight: dict[int, Delivery[T]] = {}
        # Stream sequence -> deliveries this loop settled with Retry (bounded: oldest forgotten first).
        self._retried: dict[int, int] = {}
        self._slot_free = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._feed: PullFeed | None = None

    async def _run(self) -> None:
        await settled(lambda: provision_consumer(self.js, self.spec), f"consumer {self.spec.durable}")
        self._feed = feed = PullFeed(
            self.js,
            self.spec.stream,
            self.spec.durable,
            batch=self.batch,
            expires=pull_expires(self.spec.ack_wait),
        )
        await feed.open()
        heartbeat = asyncio.create_task(self._heartbeats(), name=f"{self.name}:heartbeat")
        try:
            await self._fetch_loop(feed)
            # Stop receiving (what was delivered and not taken goes back at once); let in-flight
            # handlers finish (the supervisor bounds this by its grace).
            await feed.close()
            while self._tasks:
                await asyncio.wait(set(self._tasks))
        finally:
            heartbeat.cancel()
            pending = [*self._tasks, heartbeat]
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await feed.close()

    @property
    def pull_requests(self) -> int:
        """Pull requests this loop has made (one per half batch while idle or busy alike)."""
        return self._feed.requests if self._feed is not None else 0

    def _on_shutdown(self) -> None:
        if self._feed is not None:
            self._feed.wake()

    async def _fetch_loop(self, feed: PullFeed) -> None:
        failures = 0
        while not self.stopping:
            room = self.max_in_flight - len(self._tasks)
            if room <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            try:
                msgs = await feed.take(room, self.fetch_timeout)
                failures = 0
            except (
                nats.errors.ConnectionClosedError,
                nats.errors.ConnectionReconnectingError,
                nats.errors.OutboundBufferLimitError,
                PullFault,
            ) as exc:
                failures += 1
                log.warning("fetch_failed", consumer=self.spec.durable, error=repr(exc))
                if isinstance(exc, PullFault) and exc.consumer_missing:
                    await self._reprovision_if_missing()
                await self.sleep_or_stop(min(0.2 * 2**failures, 5.0))
                continue
            self.stats.fetched += len(msgs)
            for msg in msgs:
                task = asyncio.create_task(self._handle(msg))
                self._tasks.add(task)
                task.add_done_callback(self._task_done)

    async def _reprovision_if_missing(self) -> None:
        """The consumer was removed (e.g. its stream was deleted and recreated): put it back."""
        try:
            await self.js.consumer_info(self.spec.stream, self.spec.durable)
            return
        except NotFoundError:
            pass
        except Exception as exc:
            log.warning("consumer_info_failed", consumer=self.spec.durable, error=repr(exc))
            return
        try:
            await provision_consumer(self.js, self.spec)
            log.warning("consumer_reprovisioned", consumer=self.spec.durable)
        except Exception as again:
            log.warning("consumer_reprovision_failed", error=repr(again))

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slot_free.set()
        if not task.cancelled() and task.exception() is not None:
            # _handle settles every outcome itself; anything escaping is a bug worth a loud log.
            log.error("consumer_task_crashed", consumer=self.spec.durable, error=repr(task.exception()))

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval / 2)
            now = time.monotonic()
            for key, item in list(self._in_flight.items()):
                if now - item.started >= self.heartbeat_interval and self._in_flight.get(key) is item:
                    try:
                        await item.in_progress()
                    except Exception as exc:
                        log.warning("heartbeat_failed", consumer=self.spec.durable, error=repr(exc))

    async def _handle(self, msg: Msg) -> None:
        meta = msg.metadata
        seq = meta.sequence.stream
        headers = dict(msg.headers or {})
        msg_id = headers.get(MSG_ID_HEADER) or f"{self.spec.stream}:{seq}"
        # Deliveries that count toward the limit: those not answered with a Retry by this loop.
        deliveries = max(1, meta.num_delivered - self._retried.get(seq, 0))
        if meta.num_delivered > 1:
            self.stats.redelivered += 1
            metrics().consumer_redeliveries.add(stream=self.stream_label)
        if deliveries > self.max_deliveries:
            # Delivered more often than allowed without ever being settled (e.g. the handler crashes
            # the process): stop the loop of crashes here.
            await self._dead_letter(msg, headers, msg_id, f"not settled after {deliveries - 1} deliveries")
            return
        try:
            message = self.decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self._dead_letter(msg, headers, msg_id, f"undecodable message: {exc}")
            return
        delivery = Delivery(
            message=message,
            raw=msg,
            subject=msg.subject,
            headers=headers,
            num_delivered=meta.num_delivered,
            stream_seq=seq,
            msg_id=msg_id,
        )
        self._in_flight[seq] = delivery
        try:
            with (
                bind_context(msg_id=msg_id),
                consume_span(
                    self.span_name,
                    headers,
                    kind=SpanKind.CONSUMER,
                    attributes={
                        "messaging.system": "nats",
                        "messaging.destination.name": msg.subject,
                        "messaging.message.id": msg_id,
                        "messaging.operation.type": "process",
                        "messaging.consumer.group.name": self.spec.durable,
                    },
                ),
            ):
                await self.handler(delivery)
                if self.deliver_twice:
                    again = dataclasses.replace(delivery, num_delivered=meta.num_delivered + 1)
                    await self.handler(again)
        except asyncio.CancelledError:
            raise  # not settled: redelivered after ack_wait
        except Retry as exc:
            self._note_retry(seq)
            await self._settle(msg.nak(delay=exc.delay), "naked")
            self._handled("retried")
        except Poison as exc:
            await self._dead_letter(msg, headers, msg_id, f"poison: {exc}")
        except Exception as exc:
            self.stats.errors += 1
            if deliveries >= self.max_deliveries:
                await self._dead_letter(msg, headers, msg_id, f"{type(exc).__name__}: {exc}")
            else:
                delay = self.retry_delays[min(deliveries - 1, len(self.retry_delays) - 1)]
                log.warning(
                    "handler_failed",
                    consumer=self.spec.durable,
                    msg_id=msg_id,
                    deliveries=deliveries,
                    retry_in=delay,
                    error=f"{type(exc).__name__}: {exc}",
                )
                await self._settle(msg.nak(delay=delay), "naked")
                self._handled("failed")
        else:
            await self._settle(msg.ack(), "acked")
            self._handled("acked")
            self._retried.pop(seq, None)
        finally:
            self._in_flight.pop(seq, None)

    def _note_retry(self, seq: int) -> None:
        self._retried[seq] = self._retried.get(seq, 0) + 1
        while len(self._retried) > MAX_RETRIES_REMEMBERED:
            del self._retried[next(iter(self._retried))]

    def _handled(self, result: str) -> None:
        metrics().consumer_handled.add(stream=self.stream_label, result=result)

    async def _settle(self, verb: Awaitable[None], counter: str) -> None:
        try:
            await verb
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        except Exception as exc:
            # The message will be redelivered; the handler's effects are deduplicated.
            log.warning("settle_failed", consumer=self.spec.durable, error=repr(exc))

    async def _dead_letter(self, msg: Msg, headers: Mapping[str, str], msg_id: str, error: str) -> None:
        meta = msg.metadata
        record = DeadLetter(
            stream=meta.stream,
            consumer=self.spec.durable,
            subject=msg.subject,
            stream_seq=meta.sequence.stream,
            msg_id=msg_id,
            headers=headers,
            payload=bytes(msg.data),
            error=error[:4000],
            deliveries=meta.num_delivered,
        )
        try:
            await self.dead_letters.dead_letter(record)
        except Exception as exc:
            # Never lose a message: if the dead letter cannot be stored, leave it for a later try.
            log.error("dead_letter_failed", consumer=self.spec.durable, msg_id=msg_id, error=repr(exc))
            await self._settle(msg.nak(delay=5.0), "naked")
            self._handled("failed")
            return
        log.warning("message_dead_lettered", consumer=self.spec.durable, msg_id=msg_id, error=error[:500])
        self.stats.dead_lettered += 1
        metrics().consumer_dead_letters.add(stream=self.stream_label)
        self._handled("dead_lettered")
        await self._settle(msg.term(), "termed")
