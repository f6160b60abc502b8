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
        """Publish a batch pipelined (all in flight at once, bounded); raises if any one failed."""
        if not msgs:
            return []
        origins: Sequence[Mapping[str, str]] = self.sign(msgs) if self.sign is not None else [{}] * len(msgs)
        results = await asyncio.gather(
            *(self._publish(m, o) for m, o in zip(msgs, origins, strict=True)), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            if any(isinstance(f, asyncio.CancelledError) for f in failures):
                raise asyncio.CancelledError()
            raise PublishError(f"{len(failures)} of {len(msgs)} publishes failed; first: {failures[0]!r}")
        if any(m.core for m in msgs):
            await self.nc.flush(timeout=max(1, int(self.timeout)))
        return [r for r in results if not isinstance(r, BaseException)]
