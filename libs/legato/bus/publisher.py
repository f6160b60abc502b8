"""Publishing to JetStream with a message id and a checked PubAck, one at a time or pipelined."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck
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


class Publisher:
    """Publishes with ``Nats-Msg-Id`` and checks every PubAck.

    A publish that timed out may still have been stored, so it is retried with the same message id:
    JetStream's duplicate window turns the retry into a no-op (``PubAck.duplicate``).
    """

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext | None = None,
        *,
        timeout: float = 5.0,
        attempts: int = 3,
        max_pipeline: int = 512,
        sign: Callable[[Sequence[OutgoingMessage]], Sequence[Mapping[str, str]]] | None = None,
    ) -> None:
        self.nc = nc
        self.js = js or nc.jetstream()
        self.timeout = timeout
        self.attempts = attempts
        self._pipeline = asyncio.Semaphore(max_pipeline)
        self.max_pipeline = max_pipeline
        self.duplicates = 0
        # Proof-of-origin headers per message, for a whole batch at once (the scheduler signs a batch of
        # work items with one signature: legato.security.wiring).
        self.sign = sign

    async def publish(self, msg: OutgoingMessage) -> PubAck | None:
        return await self._publish(msg, self.sign([msg])[0] if self.sign is not None else {})

    async def _publish(self, msg: OutgoingMessage, origin: Mapping[str, str]) -> PubAck | None:
        headers = dict(msg.headers)
        if msg.msg_id:
            headers[MSG_ID_HEADER] = msg.msg_id
        headers.update(origin)
        if msg.core:
            await self.nc.publish(msg.subject, msg.payload, headers=headers or None)
            return None
        last: Exception | None = None
        async with self._pipeline:
            for attempt in range(self.attempts):
                try:
                    ack = await self.js.publish(
                        msg.subject, msg.payload, timeout=self.timeout, headers=headers or None
                    )
                except (nats.errors.TimeoutError, TimeoutError, NoStreamResponseError) as exc:
                    last = exc
                    await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
                    continue
                except APIError as exc:
                    raise PublishError(f"publish to {msg.subject} rejected: {exc}") from exc
                if ack.duplicate:
                    self.duplicates += 1
                return ack
        raise PublishError(
            f"publish to {msg.subject} not acknowledged after {self.attempts} attempts: {last!r}"
        )

    async def publish_many(self, msgs: Sequence[OutgoingMessage]) -> list[PubAck | None]:
        """Publish a batch pipelined, in order, and check every PubAck; raises if any one failed.

        JetStream messages go out with nats-py's ``publish_async`` (one reply subscription, a future
        per message: no task and no timer per message), in chunks of at most ``max_pipeline`` in
        flight; the acks of a chunk are awaited together (``timeout``), and the ones that timed out
        are sent again with the same message id (JetStream drops a copy it already stored).
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
        pending = list(chunk)
        last: BaseException | None = None
        for attempt in range(self.attempts):
            if attempt:
                await asyncio.sleep(min(0.1 * 2 ** (attempt - 1), 2.0))
            futures: dict[int, asyncio.Future[PubAck]] = {}
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
                    futures[i] = await self.js.publish_async(
                        msg.subject, msg.payload, headers=headers or None
                    )
                if futures:
                    await asyncio.wait(futures.values(), timeout=self.timeout)
            except Exception as exc:  # closed, draining, outbound buffer full: as the old gather did
                raise PublishError(f"publish of {len(msgs)} messages failed: {exc!r}") from exc
            finally:
                for future in futures.values():
                    future.cancel()  # no-op for the answered; frees nats-py's slot of the unanswered
            retry: list[int] = []
            for i, future in futures.items():
                if future.cancelled():
                    last = TimeoutError(f"no PubAck within {self.timeout}s")
                    retry.append(i)
                    continue
                error = future.exception()
                if isinstance(error, NoStreamResponseError):
                    last = error
                    retry.append(i)
                elif isinstance(error, APIError):
                    raise PublishError(f"publish to {msgs[i].subject} rejected: {error}") from error
                elif error is not None:
                    raise PublishError(f"publish to {msgs[i].subject} failed: {error!r}") from error
                else:
                    ack = future.result()
                    if ack.duplicate:
                        self.duplicates += 1
                    results[i] = ack
            if not retry:
                return
            pending = retry
        raise PublishError(
            f"{len(pending)} of {len(msgs)} publishes not acknowledged after {self.attempts} attempts; "
            f"first: {msgs[pending[0]].subject}: {last!r}"
        )
