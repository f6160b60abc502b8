"""Standing pull requests on a durable JetStream consumer: messages are pushed as they arrive.

A fetch asks the server for messages and waits for them: one pull request per fetch, so below
saturation (a fetch of one when nothing is pending) every message consumed costs a request of its
own and the client's round trip to make it. ``PullFeed`` keeps requests for up to ``min(batch,
room)`` messages standing at the server instead, as nats.go's ``Consume`` does, and tops them up
when less than half is left: a message reaches the consumer as soon as it is stored, and one request
is made per half batch.

Every request expires before the consumer's ``ack_wait`` (``pull_expires``). A process that freezes
(SIGSTOP, a long GC, a VM paused) keeps its requests at the server, which keeps delivering to them:
what it takes then comes back after ``ack_wait``, and by then its requests have expired, so the
redelivery goes to a live replica; and it takes messages for at most ``PULL_EXPIRES_MAX`` (2 s) after
it froze. A message is delivered to a frozen process at most once, and the
deliveries it wastes never add up to the dead-letter limit (with 30 s requests, a frozen scheduler
took the same messages every ``ack_wait`` until they were dead-lettered).

What could leave a request lost, and how the feed finds out:

- it expired: the server says so (status 408) with how many messages it still owed, and the feed
  asks again at once;
- the connection was re-established (nats-server restarted, a network cut): the connection's
  reconnect count changed, so every request is presumed gone and asked again;
- anything else (a consumer leader killed in a cluster takes the requests routed to it along,
  without a word): once the newest request is past its expiry by a second, none can be standing;
- the consumer is gone or JetStream does not answer (status 409 "Consumer Deleted", 503): ``take``
  raises ``PullFault`` so the caller can put the consumer back and back off.

A request presumed lost that was not asks for more than the room it was sized for: the surplus waits
in the feed's buffer, bounded by twice the batch, and every message is settled by its consumer as
before (nothing here acks).

``close`` drains the inbox (the server stops delivering to it first) and naks what was delivered
but never handed over, so another replica takes it at once instead of after ``ack_wait``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from legato.telemetry import get_logger

log = get_logger("legato.bus")

# The longest a standing request lives at the server; an idle consumer asks again this often. It is
# also how long a frozen process goes on taking messages (up to its free room) that then wait out
# ack_wait: an executor with a 30 s ack_wait and 24 s requests could hoard 60 work items for 30 s.
PULL_EXPIRES_MAX = 2.0


def pull_expires(ack_wait: float) -> float:
    """How long a consumer's requests live: within its ``ack_wait`` (see the module's doc)."""
    return max(0.05, min(PULL_EXPIRES_MAX, 0.8 * ack_wait))


STATUS = "Status"
DESCRIPTION = "Description"
PENDING_MESSAGES = "Nats-Pending-Messages"
HEARTBEAT = "100"  # not asked for; answered like any word from the server
EXPIRED = "408"
CONFLICT = "409"
# Answers that mean the requests are gone but the consumer is fine: ask again.
TRANSIENT_CONFLICTS = ("Leadership Change", "Exceeded MaxWaiting", "Server Shutdown")


class PullFault(Exception):
    """The server refused the feed's requests (the consumer is gone, JetStream did not answer …)."""

    def __init__(self, status: str, description: str) -> None:
        super().__init__(f"{status} {description}".strip())
        self.status = status
        self.description = description

    @property
    def consumer_missing(self) -> bool:
        return self.status == "503" or "Consumer Deleted" in self.description


class PullFeed:
    """Standing pull requests on one durable consumer, and the messages they bring."""

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        durable: str,
        *,
        batch: int,
        expires: float,
        arrived: asyncio.Event | None = None,
    ) -> None:
        """``arrived``: set whenever a message or a word from the server comes (shared by the feeds of
        one loop that waits for any of them)."""
        # nats-py has no standing-pull API (its fetch is one request per call); the connection and the
        # API prefix (a JetStream domain changes it) are the context's own.
        self._nc = js._nc
        self._next_subject = f"{js._prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.batch = max(1, batch)
        self._expires_ns = int(expires * 1e9)
        self._gone_after = expires + 1.0  # the newest request this old: none can be standing
        self._inbox = ""
        self._sub: Subscription | None = None
        self._buffer: deque[Msg] = deque()
        self._since: deque[float] = deque()  # when each message in the buffer came
        self.delivered_at = 0.0  # when the last message came (monotonic)
        self._arrived = arrived or asyncio.Event()
        self._asked = 0  # messages asked for and neither delivered nor given up by the server
        self._asked_at = time.monotonic()  # when the newest request was made
        self._reconnects = 0
        self._fault: PullFault | None = None
        self.requests = 0  # pull requests made (for tests and profiles)

    async def open(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._reconnects = self._nc.stats["reconnects"]
        self._sub = await self._nc.subscribe(self._inbox, cb=self._received)

    @property
    def held(self) -> int:
        """Messages delivered and not yet taken."""
        return len(self._buffer)

    @property
    def pending(self) -> int:
        """Messages asked for or delivered, and not yet taken: the room this feed holds."""
        return self._asked + len(self._buffer)

    def held_since(self, before: float) -> list[Msg]:
        """The messages delivered before ``before`` (monotonic) and not yet taken."""
        return [m for m, t in zip(self._buffer, self._since, strict=True) if t < before]

    def wake(self) -> None:
        """Return from a waiting ``take`` at once (shutdown)."""
        self._arrived.set()

    async def ask(self, room: int) -> None:
        """Keep requests standing for up to ``min(batch, room)`` messages (raises the server's refusal)."""
        self._raise_fault()
        await self._ask(room)

    def take_held(self, n: int) -> list[Msg]:
        """Up to ``n`` of the messages delivered and not yet taken, without waiting."""
        return [self._pop() for _ in range(min(n, len(self._buffer)))]

    def _pop(self) -> Msg:
        self._since.popleft()
        return self._buffer.popleft()

    async def take(self, room: int, wait: float) -> list[Msg]:
        """Up to ``room`` messages, waiting at most ``wait`` seconds for the first; keeps requests for
        up to ``min(batch, room)`` messages standing."""
        self._raise_fault()
        await self._ask(room)
        if not self._buffer:
            self._arrived.clear()
            try:
                async with asyncio.timeout(wait):
                    await self._arrived.wait()
            except TimeoutError:
                pass
            self._raise_fault()
        return self.take_held(room)

    async def close(self) -> None:
        """Stop the deliveries and give back what was delivered but never taken."""
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.drain()  # type: ignore[no-untyped-call]
            except Exception:
                pass
        while self._buffer:
            msg = self._pop()
            try:
                await msg.nak()
            except Exception:
                pass  # redelivered after ack_wait all the same

    def _raise_fault(self) -> None:
        fault, self._fault = self._fault, None
        if fault is not None:
            raise fault

    async def _ask(self, room: int) -> None:
        now = time.monotonic()
        reconnects = self._nc.stats["reconnects"]
        if reconnects != self._reconnects or (self._asked and now - self._asked_at > self._gone_after):
            self._reconnects = reconnects
            self._asked = 0
        want = min(self.batch, room) - len(self._buffer)
        if want <= 0 or self._asked > want // 2:
            return
        n = want - self._asked
        request = b'{"batch":%d,"expires":%d}' % (n, self._expires_ns)
        await self._nc.publish(self._next_subject, request, reply=self._inbox)
        self._asked_at = now
        self._asked += n
        self.requests += 1

    async def _received(self, msg: Msg) -> None:
        headers = msg.headers
        status = headers.get(STATUS) if headers else None
        if not status:
            if self._asked:
                self._asked -= 1
            self.delivered_at = time.monotonic()
            self._buffer.append(msg)
            self._since.append(self.delivered_at)
            self._arrived.set()
            return
        if status == HEARTBEAT:
            return
        description = headers.get(DESCRIPTION, "") if headers else ""
        owed = headers.get(PENDING_MESSAGES) if headers else None
        if status == EXPIRED or (status == CONFLICT and description in TRANSIENT_CONFLICTS):
            # A request ended: what it still owed is not coming.
            self._asked = max(0, self._asked - int(owed)) if owed else 0
        else:
            self._asked = 0
            self._fault = PullFault(status, description)
            log.warning("pull_refused", subject=self._next_subject, status=status, description=description)
        self._arrived.set()
