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

With ``bulk``, the loop serves a second consumer of the same stream (a work queue's bulk lane) after
its first (the lead lane): whenever it has room, it takes what the lead lane delivered first. A
standing request holds room whether or not messages come, so the lanes ask by what they do:

- the bulk lane idle (nothing delivered for ``BULK_IDLE_SECONDS``): it keeps one message asked for,
  and the lead lane the rest of the room, as a lone consumer would;
- the bulk lane busy: it asks for the room (less the lead lane's messages waiting for it), and the
  lead lane keeps ``lead_ahead`` messages asked for beyond it. Those wait in the loop for the next
  free slots, taken before anything of the bulk lane's: a lead message never waits in the stream
  behind a bulk lane that always has work, nor for more than the next slot to free.

So up to ``max(1, lead_ahead)`` delivered messages may wait in the loop beyond ``max_in_flight``; each
is kept alive (``in_progress``) like a running handler until it is taken, and given back (nak) if the
loop stops first.
Every outcome is counted in ``legato.consumer.handled`` (``acked``, ``retried``, ``failed``,
``dead_lettered``), with ``legato.consumer.redeliveries`` and ``legato.consumer.dead_letters`` beside.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
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


# A bulk lane that delivered nothing for this long is idle: the lead lane may ask for all the room.
BULK_IDLE_SECONDS = 2.0
# How long a pull request of a loop with two lanes lives (the longest the lanes' split lags the work).
LANE_EXPIRES = 0.5

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
        bulk: ConsumerSpec | None = None,
        lead_ahead: int = 0,
    ) -> None:
        super().__init__()
        self.js = js
        self.spec = spec
        self.bulk = bulk
        self.lead_ahead = max(0, lead_ahead)
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
        self._bulk_feed: PullFeed | None = None
        self._arrived = asyncio.Event()  # a message came on either lane (with ``bulk``)

    def _new_feed(self, spec: ConsumerSpec) -> PullFeed:
        expires, arrived = pull_expires(spec.ack_wait), None
        if self.bulk is not None:
            # With two lanes a request asked for by the rule of the moment (bulk lane idle or busy) holds
            # its room until answered or expired: short requests let the split follow the work in 0.5 s.
            expires, arrived = min(LANE_EXPIRES, expires), self._arrived
        return PullFeed(
            self.js, spec.stream, spec.durable, batch=self.batch, expires=expires, arrived=arrived
        )

    async def _run(self) -> None:
        specs = [self.spec] if self.bulk is None else [self.spec, self.bulk]
        for spec in specs:
            await settled(functools.partial(provision_consumer, self.js, spec), f"consumer {spec.durable}")
        self._feed = feed = self._new_feed(self.spec)
        feeds = [feed]
        if self.bulk is not None:
            self._bulk_feed = self._new_feed(self.bulk)
            feeds.append(self._bulk_feed)
        for f in feeds:
            await f.open()
        heartbeat = asyncio.create_task(self._heartbeats(), name=f"{self.name}:heartbeat")
        try:
            await self._fetch_loop(feed)
            # Stop receiving (what was delivered and not taken goes back at once); let in-flight
            # handlers finish (the supervisor bounds this by its grace).
            for f in feeds:
                await f.close()
            while self._tasks:
                await asyncio.wait(set(self._tasks))
        finally:
            heartbeat.cancel()
            pending = [*self._tasks, heartbeat]
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for f in feeds:
                await f.close()

    @property
    def pull_requests(self) -> int:
        """Pull requests this loop has made (one per half batch while idle or busy alike)."""
        return sum(f.requests for f in (self._feed, self._bulk_feed) if f is not None)

    def _on_shutdown(self) -> None:
        if self._feed is not None:
            self._feed.wake()
        self._arrived.set()

    async def _take(self, feed: PullFeed, room: int) -> list[Msg]:
        """Up to ``room`` messages: the lead lane's first, the bulk lane's after (see the module's doc)."""
        bulk = self._bulk_feed
        if bulk is None:
            return await feed.take(room, self.fetch_timeout)
        self._arrived.clear()  # before looking: a message that comes after the look wakes the wait
        if self._bulk_busy():
            # Room the lead lane's requests hold beyond ``lead_ahead`` (asked for while the bulk lane was
            # idle) is left to them until they are answered or expire.
            await bulk.ask(room - max(feed.held, feed.pending - self.lead_ahead))
            await feed.ask(self.lead_ahead)
        else:
            await bulk.ask(1)
            # Not all the room: what the lead lane asks for now stays its own until answered or expired,
            # and a bulk lane that wakes can use the rest at once.
            await feed.ask(max(1, min(room - bulk.pending, max(self.lead_ahead, room // 2))))
        msgs = feed.take_held(room)
        msgs += bulk.take_held(room - len(msgs))
        if msgs or self.stopping:
            return msgs
        try:
            async with asyncio.timeout(self.fetch_timeout):
                await self._arrived.wait()
        except TimeoutError:
            return []
        msgs = feed.take_held(room)
        return msgs + bulk.take_held(room - len(msgs))

    def _bulk_busy(self) -> bool:
        bulk = self._bulk_feed
        return bulk is not None and (
            bulk.held > 0 or time.monotonic() - bulk.delivered_at < BULK_IDLE_SECONDS
        )

    async def _wait_for_room(self, feed: PullFeed) -> None:
        self._slot_free.clear()
        if not self._bulk_busy():
            await self._slot_free.wait()
            return
        # Every slot taken, the bulk lane busy: the lead lane's requests stay standing (renewed as they
        # expire), so a lead message waits here for the next free slot, not in the stream.
        await feed.ask(self.lead_ahead)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LANE_EXPIRES / 2):
                await self._slot_free.wait()

    async def _fetch_loop(self, feed: PullFeed) -> None:
        failures = 0
        while not self.stopping:
            room = self.max_in_flight - len(self._tasks)
            try:
                if room <= 0:
                    await self._wait_for_room(feed)
                    continue
                msgs = await self._take(feed, room)
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
                    for spec in (self.spec, self.bulk):
                        if spec is not None:
                            await self._reprovision_if_missing(spec)
                await self.sleep_or_stop(min(0.2 * 2**failures, 5.0))
                continue
            self.stats.fetched += len(msgs)
            for msg in msgs:
                task = asyncio.create_task(self._handle(msg))
                self._tasks.add(task)
                task.add_done_callback(self._task_done)

    async def _reprovision_if_missing(self, spec: ConsumerSpec) -> None:
        """The consumer was removed (e.g. its stream was deleted and recreated): put it back."""
        try:
            await self.js.consumer_info(spec.stream, spec.durable)
            return
        except NotFoundError:
            pass
        except Exception as exc:
            log.warning("consumer_info_failed", consumer=spec.durable, error=repr(exc))
            return
        try:
            await provision_consumer(self.js, spec)
            log.warning("consumer_reprovisioned", consumer=spec.durable)
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
                    await self._keep_alive(item.in_progress)
            # Messages delivered and waiting in the loop for a slot (a lead message while the bulk lane's
            # fill every slot, or what a request presumed lost brought): alive until taken, so JetStream
            # hands them to nobody else meanwhile.
            for f in (self._feed, self._bulk_feed):
                for msg in f.held_since(now - self.heartbeat_interval) if f is not None else ():
                    await self._keep_alive(msg.in_progress)

    async def _keep_alive(self, in_progress: Callable[[], Awaitable[None]]) -> None:
        try:
            await in_progress()
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
            consumer=meta.consumer or self.spec.durable,  # the bulk lane's, for a message that came there
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
