"""Publishing to JetStream with a message id and a checked PubAck, one at a time or pipelined.

PubAcks come back to one reply subscription per publisher (``PubAckInbox``), matched by a token,
answered by position in a round of publishes that one future waits for. nats-py's ``publish_async``
does the same with a future, a semaphore wait, a NUID and a JSON parse of its own per message:
``bench/bus.py`` prints the publishing process's CPU per message both ways (on a 2-core machine, 220
bytes in rounds of 8 / 64: 66.5 / 43.8 µs with ``publish_async``, 43.1 / 25.2 µs here).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.client import NO_RESPONDERS_STATUS, Client
from nats.aio.msg import Msg
from nats.js.api import Header
from nats.js.errors import APIError, NoStreamResponseError

from legato.telemetry import get_logger

log = get_logger("legato.bus")

MSG_ID_HEADER = "Nats-Msg-Id"


class PublishError(RuntimeError):
    """A publish was not acknowledged by JetStream (after retries)."""


@dataclass(frozen=True)
class OutgoingMessage:
    """One message to publish: subject, payload, optional ``Nats-Msg-Id`` for JetStream dedup, and headers."""

    subject: str
    payload: bytes
    msg_id: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # Core NATS (fire-and-forget, e.g. cancel requests) instead of a JetStream stream.
    core: bool = False


class PubAck(msgspec.Struct, frozen=True):
    """JetStream's acknowledgement of a stored message (the fields of nats-py's ``PubAck``)."""

    stream: str
    seq: int
    duplicate: bool = False
    domain: str | None = None


class _Answer(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    domain: str | None = None
    error: dict[str, Any] | None = None


_ANSWER = msgspec.json.Decoder(_Answer)


def _answer_of(msg: Msg) -> PubAck | BaseException:
    """What a reply to a JetStream publish says: the ack, or the error to raise for that message."""
    if msg.headers and msg.headers.get(Header.STATUS) == NO_RESPONDERS_STATUS:
        return NoStreamResponseError()
    try:
        answer = _ANSWER.decode(msg.data)
    except msgspec.DecodeError as exc:
        return PublishError(f"unreadable PubAck {msg.data[:200]!r}: {exc}")
    if answer.error is not None:
        try:
            APIError.from_error(answer.error)  # raises the error class of its code
        except APIError as exc:
            return exc
        except TypeError:
            return APIError(description=str(answer.error))
    return PubAck(answer.stream, answer.seq, answer.duplicate, answer.domain)


class _Round:
    """The publishes sent together: their answers by position, and a future set once all came."""

    __slots__ = ("answers", "done", "left")

    def __init__(self, n: int) -> None:
        self.answers: list[PubAck | BaseException | None] = [None] * n
        self.left = n
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def answer(self, i: int, answer: PubAck | BaseException) -> None:
        if self.answers[i] is None:
            self.answers[i] = answer
            self.left -= 1
            if self.left == 0 and not self.done.done():
                self.done.set_result(None)


class PubAckInbox:
    """One subscription (``<inbox prefix>.<nuid>.*``, under the connection's own inbox, so within its
    role's permissions) for the replies to every JetStream publish of a connection; a publish's
    reply subject ends with a token naming its round and position. A reply that comes after its round
    stopped waiting finds no token and is dropped (the message is published again under its id)."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self._prefix = ""
        self._cut = 0
        self._next = 0
        self._waiting: dict[str, tuple[_Round, int]] = {}
        self._opening: asyncio.Lock | None = None

    async def open(self) -> None:
        if self._prefix:
            return
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if not self._prefix:
                prefix = f"{self.nc.new_inbox()}."
                await self.nc.subscribe(f"{prefix}*", cb=self._on_reply)
                self._prefix, self._cut = prefix, len(prefix)

    async def _on_reply(self, msg: Msg) -> None:
        waiting = self._waiting.pop(msg.subject[self._cut :], None)
        if waiting is not None:
            waiting[0].answer(waiting[1], _answer_of(msg))

    async def send(
        self, round_: _Round, i: int, subject: str, payload: bytes, headers: dict[str, str] | None
    ) -> str:
        """Publish with a reply token for position ``i`` of ``round_``; returns the token."""
        self._next += 1
        token = f"{self._next:x}"
        self._waiting[token] = (round_, i)
        try:
            await self.nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
        except BaseException:
            del self._waiting[token]
            raise
        return token

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> PubAck:
        """Publish one message and wait for its PubAck; raises what JetStream answered instead (the
        ``APIError`` of its code, ``NoStreamResponseError``). Neither retried nor bounded in time: the
        caller bounds the wait and decides what an unanswered publish means (``executor/claims.py``).
        One future and a token, against a task, a NUID inbox and a JSON parse for nats-py's request."""
        await self.open()
        round_ = _Round(1)
        token = await self.send(round_, 0, subject, payload, headers)
        try:
            await round_.done
        finally:
            self.forget((token,))
            round_.done.cancel()  # no-op when done
        answer = round_.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        assert answer is not None
        return answer

    def forget(self, tokens: Sequence[str]) -> None:
        """Stop waiting for these replies (their round timed out or failed)."""
        for token in tokens:
            self._waiting.pop(token, None)

    @property
    def waiting(self) -> int:
        return len(self._waiting)


class Publisher:
    """Publishes with ``Nats-Msg-Id`` and checks every PubAck.

    A publish that timed out may still have been stored, so it is retried with the same message id:
    JetStream's duplicate window turns the retry into a no-op (``PubAck.duplicate``).
    """

    def __init__(
        self,
        nc: Client,
        *,
        timeout: float = 5.0,
        attempts: int = 3,
        max_pipeline: int = 512,
        sign: Callable[[Sequence[OutgoingMessage]], Sequence[Mapping[str, str]]] | None = None,
        write_through: bool = False,
    ) -> None:
        self.nc = nc
        self.timeout = timeout
        self.attempts = attempts
        self.max_pipeline = max_pipeline
        self.duplicates = 0
        self.acks = PubAckInbox(nc)
        # Proof-of-origin headers per message, for a whole batch at once (the scheduler signs a batch of
        # work items with one signature: legato.security.wiring).
        self.sign = sign
        # Each round goes to the socket as soon as it is queued (``write_out``): for publishers of
        # batches on a run's critical path (the outbox relays), not for many small publishes a loop
        # iteration (an executor's results), which nats-py's flusher coalesces better.
        self.write_through = write_through

    async def publish(self, msg: OutgoingMessage) -> PubAck | None:
        """Publish one message (retried as ``publish_many`` does); its PubAck, None for core NATS."""
        return (await self.publish_many((msg,)))[0]

    async def publish_many(self, msgs: Sequence[OutgoingMessage]) -> list[PubAck | None]:
        """Publish a batch pipelined, in order, and check every PubAck; raises if any one failed.

        JetStream messages go out in rounds of at most ``max_pipeline`` whose acks are awaited together
        (``timeout``); the ones not answered in time are sent again with the same message id (JetStream
        drops a copy it already stored), at most ``attempts`` times. Core NATS messages (``core``) go
        out once and are flushed.
        """
        if not msgs:
            return []
        origins: Sequence[Mapping[str, str]] = self.sign(msgs) if self.sign is not None else [{}] * len(msgs)
        results: list[PubAck | None] = [None] * len(msgs)
        for start in range(0, len(msgs), self.max_pipeline):
            await self._publish_chunk(
                msgs, origins, results, range(start, min(start + self.max_pipeline, len(msgs)))
            )
        if any(m.core for m in msgs):
            await self.nc.flush(timeout=max(1, int(self.timeout)))
        return results

    async def _publish_chunk(
        self,
        msgs: Sequence[OutgoingMessage],
        origins: Sequence[Mapping[str, str]],
        results: list[PubAck | None],
        chunk: range,
    ) -> None:
        await self.acks.open()
        pending = list(chunk)
        last: BaseException | None = None
        for attempt in range(self.attempts):
            if attempt:
                await asyncio.sleep(min(0.1 * 2 ** (attempt - 1), 2.0))
            sent: list[int] = []
            tokens: list[str] = []
            round_ = _Round(sum(1 for i in pending if not msgs[i].core))
            try:
                for i in pending:
                    msg = msgs[i]
                    headers = dict(msg.headers)
                    if msg.msg_id:
                        headers[MSG_ID_HEADER] = msg.msg_id
                    headers.update(origins[i])
                    if msg.core:
                        if attempt == 0:
                            await self.nc.publish(msg.subject, msg.payload, headers=headers or None)
                        continue
                    tokens.append(
                        await self.acks.send(round_, len(sent), msg.subject, msg.payload, headers or None)
                    )
                    sent.append(i)
                if self.write_through:
                    write_out(self.nc)
                if sent:
                    await asyncio.wait((round_.done,), timeout=self.timeout)
            except Exception as exc:  # closed, draining, outbound buffer full
                raise PublishError(f"publish of {len(msgs)} messages failed: {exc!r}") from exc
            finally:
                self.acks.forget(tokens)  # those answered are gone already
                round_.done.cancel()  # no-op when done
            retry: list[int] = []
            for pos, i in enumerate(sent):
                answer = round_.answers[pos]
                if answer is None:
                    last = TimeoutError(f"no PubAck within {self.timeout}s")
                    retry.append(i)
                elif isinstance(answer, NoStreamResponseError):
                    last = answer
                    retry.append(i)
                elif isinstance(answer, APIError):
                    raise PublishError(f"publish to {msgs[i].subject} rejected: {answer}") from answer
                elif isinstance(answer, BaseException):
                    raise PublishError(f"publish to {msgs[i].subject} failed: {answer!r}") from answer
                else:
                    if answer.duplicate:
                        self.duplicates += 1
                    results[i] = answer
            if not retry:
                return
            pending = retry
        raise PublishError(
            f"{len(pending)} of {len(msgs)} publishes not acknowledged after {self.attempts} attempts; "
            f"first: {msgs[pending[0]].subject}: {last!r}"
        )


def write_out(nc: Client) -> None:
    """Hand what ``nc`` has queued to the socket now, instead of on the client's flusher task's turn,
    when the connection has been quiet.

    nats-py queues a publish and writes it from a task of its own, which runs after whatever else the
    event loop has ready: after a commit, the actor's bookkeeping and acks, another relay's statement.
    On an unloaded round trip that wait was a tenth of each hop's time (``docs/performance.md``). A
    caller that has queued all it has to send calls this once: the whole queue goes in one write,
    oldest first, as the flusher would write it, only sooner.

    As Nagle's algorithm does for TCP, only the first write after a quiet spell goes at once: within
    ``QUIET`` of the last one, the flusher writes, so that under load the publishes of a loop
    iteration still share one write (and one read by nats-server) instead of one each. Also left to
    the flusher while the socket does not keep up (its transport buffers something: the flusher waits
    for it to drain, so a slow server still holds publishers back), while the client is not connected
    (it keeps its queue for after a reconnect), and for a transport without a stream writer
    (websocket). Relies on nats-py's queue (``_pending``); if a version changes it, this does nothing
    and the flusher writes as before (``tests/integration/test_bus_write_out.py`` says so)."""
    writer = _queue_writer(nc)
    if writer is None:
        return
    now = time.monotonic()
    if now - _written_at.get(nc, 0.0) < QUIET:
        return
    transport = writer.transport
    if transport.is_closing() or transport.get_write_buffer_size():
        return
    _hand_over(nc, writer)
    _written_at[nc] = now


async def caught_up(nc: Client, timeout: int = 10) -> None:
    """Return once nats-server has read everything ``nc`` sent before the call: a subscription just
    made is in place at the server, a publish has been routed.

    ``nc.flush()`` alone does not promise that. nats-py writes its PING straight to the socket, ahead
    of the commands still queued for its flusher task (the SUB just made); when the server reads the
    PING on its own (a loaded machine), its PONG comes back before the server has seen the SUB, and
    what is published meanwhile reaches nobody. Here the queue goes to the socket first, in order,
    so the PING follows it on the wire (``tests/integration/test_bus_write_out.py``). With a nats-py
    whose queue is not ``_pending`` any more, a first flush lets the flusher write it and a second
    PING follows it."""
    if not isinstance(getattr(nc, "_pending", None), list):
        await nc.flush(timeout=timeout)
    elif (writer := _queue_writer(nc)) is not None:
        _hand_over(nc, writer)
    await nc.flush(timeout=timeout)


def _queue_writer(nc: Client) -> Any:
    """The stream writer of ``nc``'s socket when commands are queued for it and it is connected;
    None otherwise (nothing queued, reconnecting or closed: nats-py keeps its queue for later, a
    transport without a stream writer, or a nats-py whose queue is not ``_pending`` any more)."""
    pending = getattr(nc, "_pending", None)
    writer = getattr(getattr(nc, "_transport", None), "_io_writer", None)
    if not isinstance(pending, list) or not pending or writer is None or not nc.is_connected:
        return None
    return writer


def _hand_over(nc: Client, writer: Any) -> None:
    """Write ``nc``'s whole queue in one go, oldest first, as its flusher would."""
    writer.writelines(nc._pending)
    nc._pending = []
    nc._pending_data_size = 0


# A connection that wrote out less than this ago leaves its next publishes to nats-py's flusher.
QUIET = 0.001
_written_at: weakref.WeakKeyDictionary[Client, float] = weakref.WeakKeyDictionary()
