"""The transactional outbox and its relay.

A transaction that must emit messages writes them with ``add_to_outbox`` on its own connection, so the
messages exist if and only if the transaction committed. The relay publishes them to NATS with
``Nats-Msg-Id`` = the row's message id and deletes them after the PubAck; a relay that crashes between
the two republishes with the same id and JetStream (then the consumer's durable dedup) drops the copy.

Rows reach the relay two ways. The process that committed them hands them over (``committed``, with
the ids ``add_to_outbox`` returned) right after its commit, and the relay publishes them from memory:
no query stands between a commit and its publish. Every other row (a process that crashed before it
handed its rows over, a publish that failed, a process that only wakes the relay) is found in the
table: at once after ``wake()``, and by a poll every ``poll_interval`` for rows older than
``HANDOFF_GRACE`` (younger ones are still on their way from the process that committed them, which
would publish them a second time; a copy is harmless, JetStream drops it, but costs a publish).

Lifecycle events have an outbox of their own, ``event_outbox``: one row per transaction holding its
events in order (``add_events``, ``event_outbox_cte``), published by ``EventOutboxRelay``, whose
relays in every process take turns so that events go out in commit order. A one-step run makes four
events; a row each was most of what they cost Postgres.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Sequence

import asyncpg

from legato.bus.publisher import OutgoingMessage, Publisher
from legato.lifecycle.component import Component
from legato.telemetry import get_logger, metrics

log = get_logger("legato.store")

# A poll leaves rows younger than this to the process that committed them (it hands them over).
HANDOFF_GRACE = 2.0
# At most this many handed-over rows wait in memory; beyond, the relay reads them from the table.
MAX_HANDED = 50_000

# Deletes rows once published, committed without waiting for the WAL flush (``synchronous_commit``
# off for this transaction only): a delete lost to a Postgres crash leaves rows that are published
# again under their message ids, which JetStream (then the consumer's durable dedup) drops, exactly as
# after a relay that died between its publish and its delete. Only the outbox's own deletes are
# asynchronous: every write a reply or an ack waits for stays durable before it returns.
DELETE_PUBLISHED = (
    "WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true) AS v) "
    "DELETE FROM outbox WHERE id = ANY($1::bigint[]) AND (SELECT v FROM relaxed) = 'off'"
)

# Rows handed over and published are deleted together, at most this long after the first of them
# was published (or at once when a batch's worth waits): below saturation a relay publishes a round
# every few milliseconds, one or two rows each, and a delete per round was a statement per round.
# Far below HANDOFF_GRACE, so a poll never finds them; a sweep deletes them first (``_sweep``).
DELETE_LINGER = 0.1

# A row of the outbox as its transaction wrote it: its id, and the message.
OutboxRow = tuple[int, OutgoingMessage]


# How many arguments ``outbox_ctes`` takes.
OUTBOX_ARGS = 5


def outbox_ctes(first: int, where: str = "") -> str:
    """The WITH-list entries that write messages to the outbox, their arguments from ``$first`` on
    (``outbox_args``): for a statement that writes other rows too. ``OUTBOX_IDS`` selects the ids.
    ``where`` filters the messages (``u.n`` is a message's position, from 1): only those are written."""
    # The ids are drawn in a materialized CTE and returned in the order of the messages (RETURNING's
    # order is not promised); the insert reads the same materialized rows.
    a = [f"${first + i}" for i in range(OUTBOX_ARGS)]
    return (
        "outbox_v AS MATERIALIZED ("
        " SELECT nextval('outbox_id_seq') AS id, u.*"
        f" FROM unnest({a[0]}::text[], {a[1]}::bytea[], {a[2]}::text[], {a[3]}::jsonb[], {a[4]}::boolean[])"
        f" WITH ORDINALITY AS u(subject, payload, msg_id, headers, core, n) {where}"
        "), outbox_written AS ("
        " INSERT INTO outbox (id, subject, payload, msg_id, headers, core)"
        " SELECT id, subject, payload, msg_id, headers, core FROM outbox_v)"
    )


# The ids ``outbox_ctes`` drew, in the order of the messages.
OUTBOX_IDS = "ARRAY(SELECT id FROM outbox_v ORDER BY n)"
_ADD_TO_OUTBOX = f"WITH {outbox_ctes(1)} SELECT {OUTBOX_IDS}"


def outbox_args(messages: Sequence[OutgoingMessage]) -> list[list[object]]:
    """The five arguments of ``outbox_ctes``."""
    return [
        [m.subject for m in messages],
        [m.payload for m in messages],
        [m.msg_id for m in messages],
        [dict(m.headers) if m.headers else None for m in messages],
        [m.core for m in messages],
    ]


def outbox_rows(ids: Sequence[int], messages: Sequence[OutgoingMessage]) -> list[OutboxRow]:
    """The rows ``outbox_ctes`` wrote, for ``OutboxRelay.committed`` once the transaction committed."""
    return list(zip(ids, messages, strict=True))


async def add_to_outbox(conn: asyncpg.Connection, messages: Sequence[OutgoingMessage]) -> list[OutboxRow]:
    """Write messages in the caller's transaction (one statement for the whole batch); returns the rows,
    for ``OutboxRelay.committed`` once the transaction committed."""
    if not messages:
        return []
    return outbox_rows(await conn.fetchval(_ADD_TO_OUTBOX, *outbox_args(messages)), messages)


# The lifecycle events' own outbox (``event_outbox``, docs/events.md): one row per transaction, holding
# that transaction's events in order; ``EventOutboxRelay`` publishes them one message each.
EVENT_OUTBOX_ARGS = 3
_INSERT_EVENTS = "INSERT INTO event_outbox (subjects, payloads, msg_ids) VALUES (${0}::text[], ${1}::bytea[], ${2}::text[])"


def event_outbox_cte(first: int) -> str:
    """The WITH-list entry that writes one ``event_outbox`` row, its arguments from ``$first`` on
    (``event_outbox_args``): for a statement that writes other rows too."""
    return f"w_events AS ({_INSERT_EVENTS.format(first, first + 1, first + 2)})"


def event_outbox_args(events: Sequence[OutgoingMessage]) -> list[list[object]]:
    """The three arguments of ``event_outbox_cte``. An event is a JetStream message with a message id
    and no headers (its id is how a republished copy is dropped)."""
    for m in events:
        if not m.msg_id or m.headers or m.core:
            raise ValueError(f"event on {m.subject}: needs a message id, and no headers or core NATS")
    return [[m.subject for m in events], [m.payload for m in events], [m.msg_id for m in events]]


async def add_events(conn: asyncpg.Connection, events: Sequence[OutgoingMessage]) -> None:
    """Write lifecycle events in the caller's transaction, as one ``event_outbox`` row."""
    if events:
        await conn.execute(_INSERT_EVENTS.format(1, 2, 3), *event_outbox_args(events))


class OutboxRelay(Component):
    """Publishes committed outbox rows, oldest first, in pipelined batches.

    Woken at once by ``wake()`` after a local commit; polls every ``poll_interval`` for rows other
    processes left behind (a crashed process's rows are picked up by any relay). Several relays may run:
    ``FOR UPDATE SKIP LOCKED`` gives each its own rows.
    """

    name = "outbox-relay"
    shutdown_stage = 10  # last: flush what every other component committed

    def __init__(
        self,
        pool: asyncpg.Pool,
        publisher: Publisher,
        *,
        batch: int = 500,
        poll_interval: float = 0.5,
        kinds: tuple[str, ...] | None = None,
        name: str | None = None,
        pace: float = 0.0,
    ) -> None:
        """``kinds``: relay only rows on ``legato.<kind>.…`` subjects (the ones this service's NATS
        permissions let it publish, ``legato.security.permissions.relay_kinds``); None = every row.
        ``pace``: under load, at most one read of the table per ``pace`` seconds (``_run``); a relay
        woken when idle reads at once."""
        super().__init__()
        if name is not None:
            self.name = name
        self.pool = pool
        self.publisher = publisher
        self.batch = batch
        self.poll_interval = poll_interval
        self._wake = asyncio.Event()
        # Rows this process committed and handed over, to publish from memory, oldest first.
        self._handed: deque[OutboxRow] = deque()
        # The table must be read now (wake(), or a handed-over publish failed), not only old rows.
        self._sweep = False
        # Handed-over rows published and not deleted yet (``DELETE_LINGER``), and when they must be.
        self._unpurged: list[int] = []
        self._purge_at = 0.0
        self._db_token = ""
        self.pace = pace
        self._read_began = 0.0  # when the last read of the table began (loop time)
        self.published = 0
        self.rounds = 0
        self.subject_pattern = None if kinds is None else rf"^([^.]+\.)?legato\.({'|'.join(kinds)})\."
        # The same pattern in Python, for rows handed over (Postgres's and Python's regex agree on these).
        self._subject_re = re.compile(self.subject_pattern) if self.subject_pattern else None

    @property
    def handoff_grace(self) -> float:
        """How old a row must be for a poll to take it: younger ones are on their way from the process
        that committed them."""
        return HANDOFF_GRACE

    def wake(self) -> None:
        """Rows were committed that nobody hands over: read the table now."""
        self._sweep = True
        self._wake.set()

    def takes(self, subject: str) -> bool:
        """Whether this relay publishes rows on ``subject`` (one of its kinds)."""
        return self._subject_re is None or self._subject_re.match(subject) is not None

    def committed(self, rows: Sequence[OutboxRow]) -> None:
        """Rows this process's transaction wrote with ``add_to_outbox`` and committed: published from
        memory, without reading the table. Call it only after the commit succeeded (a rolled-back row
        must never be published). Rows of other kinds are left to the relay that takes them."""
        mine = [row for row in rows if self.takes(row[1].subject)]
        if not mine:
            return
        if len(self._handed) + len(mine) > MAX_HANDED:
            # Far behind (NATS slow or away): the table holds them; read it instead of growing memory.
            self.wake()
            return
        self._handed.extend(mine)
        self._wake.set()

    def _on_shutdown(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        self._db_token = await self._database_token()
        failures = 0
        # A poll leaves young rows to the process that committed them, which hands them over (a relay
        # that is never handed rows, ``handoff_grace`` 0, takes every row).
        grace = self.handoff_grace
        polled = True  # the first round reads the table: rows a previous run of this process left
        loop = asyncio.get_running_loop()
        while True:
            try:
                while self._handed:
                    await self.relay_handed()
                    if self._purge_due(loop.time()):
                        await self.purge_published()
                if self._purge_due(loop.time()) or self._sweep or polled:
                    # Before any read of the table too: it must not find rows already published.
                    await self.purge_published()
                if self._sweep or polled:
                    min_age = 0.0 if self._sweep else grace
                    self._sweep = False
                    self._read_began = loop.time()
                    # A round that found fewer rows than it may take took every row there was: rows
                    # committed since are handed over, wake the relay again, or are found by the
                    # poll. So no empty round follows every batch.
                    while await self.relay_once(min_age) >= self.batch:
                        failures = 0
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                self._sweep = True  # what was not published is in the table
                log.warning("outbox_relay_failed", error=repr(exc), failures=failures)
                if await self.sleep_or_stop(min(0.1 * 2**failures, 5.0)):
                    break
                continue
            if self.stopping:
                break
            polled = False
            # Rows committed while the table was read (wake() came meanwhile): under load. Wait out the
            # pace, then take them and what follows in one read instead of one read per commit.
            paced = self.pace and self._sweep and not self._handed
            if paced and await self.sleep_or_stop(self._read_began + self.pace - loop.time()):
                break
            # Idle for poll_interval: poll the table. Published rows to delete wake the loop sooner.
            poll_at = loop.time() + self.poll_interval
            while not self._wake.is_set() and not polled:
                until = min(poll_at, self._purge_at) if self._unpurged else poll_at
                try:
                    async with asyncio.timeout(max(0.0, until - loop.time())):
                        await self._wake.wait()
                except TimeoutError:
                    polled = loop.time() >= poll_at
                    if self._unpurged and loop.time() >= self._purge_at:
                        break
            self._wake.clear()
        # Last pass so rows committed just before shutdown are not left to the next start.
        try:
            while self._handed:
                await self.relay_handed()
            await self.purge_published()
            while await self.relay_once():
                pass
        except Exception as exc:
            log.warning("outbox_final_relay_failed", error=repr(exc))

    async def _database_token(self) -> str:
        # Message ids must not repeat if the database is recreated while NATS keeps its dedup window.
        async with self.pool.acquire() as conn:
            ident = await conn.fetchval(
                "SELECT system_identifier::text || '.' || (SELECT oid FROM pg_database WHERE datname = current_database())::text FROM pg_control_system()"
            )
        return str(ident)

    async def relay_handed(self) -> int:
        """Publish up to one batch of the rows handed over, oldest first; they are deleted by
        ``purge_published`` within ``DELETE_LINGER`` (several rounds' rows in one statement).

        Nothing is read first: the rows are this process's, committed. If the publish fails they are
        dropped from memory (still in the table, the next round reads them: ``_sweep``). Another relay
        may have read one of them meanwhile (a row older than the grace): both publish it under its one
        message id, and JetStream keeps one copy."""
        if not self._db_token:
            self._db_token = await self._database_token()
        rows = [self._handed.popleft() for _ in range(min(self.batch, len(self._handed)))]
        msgs = [self._with_id(row_id, m) for row_id, m in rows]
        try:
            await self.publisher.publish_many(msgs)
        except BaseException:
            self._sweep = True
            raise
        self.published += len(rows)
        self.rounds += 1
        metrics().outbox_published.add(len(rows))
        if not self._unpurged:
            self._purge_at = asyncio.get_running_loop().time() + DELETE_LINGER
        self._unpurged.extend(r[0] for r in rows)
        return len(rows)

    def _purge_due(self, now: float) -> bool:
        return bool(self._unpurged) and (len(self._unpurged) >= self.batch or now >= self._purge_at)

    async def purge_published(self) -> None:
        """Delete the handed-over rows published so far, in one statement.

        A crash before it leaves them in the table: any relay publishes them again under their message
        ids, and JetStream (then the consumer's durable dedup) drops the copies, as after a relay that
        died between its publish and its delete."""
        ids, self._unpurged = self._unpurged, []
        if not ids:
            return
        try:
            await self.pool.execute(DELETE_PUBLISHED, ids)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Published: a later round publishes them again under the same ids (dropped as copies).
            log.warning("outbox_delete_failed", rows=len(ids), error=repr(exc))
            self._sweep = True

    def _msg_id(self, row_id: int, msg_id: str | None) -> str:
        """The row's message id, or one from the database and the row's id (unique across recreations)."""
        return msg_id or f"ob.{self._db_token}.{row_id}"

    def _with_id(self, row_id: int, m: OutgoingMessage) -> OutgoingMessage:
        if m.msg_id:
            return m
        return OutgoingMessage(
            m.subject, m.payload, msg_id=self._msg_id(row_id, None), headers=m.headers, core=m.core
        )

    async def relay_once(self, min_age: float = 0.0) -> int:
        """Publish and delete one batch read from the table, of rows at least ``min_age`` seconds old;
        returns how many rows it relayed (0 = nothing to relay)."""
        if not self._db_token:
            self._db_token = await self._database_token()
        async with self.pool.acquire() as conn, conn.transaction():
            ids, msgs, oldest = await self._read(conn, min_age)
            # The oldest row this relay sees: how far publishing lags behind the commits (0 = caught up).
            metrics().outbox_lag.set(oldest)
            if not ids:
                return 0
            await self.publisher.publish_many(msgs)
            await conn.execute(DELETE_PUBLISHED, ids)
        self._relayed(len(msgs))
        return len(ids)

    def _relayed(self, messages: int) -> None:
        """Count a round that published ``messages``."""
        self.published += messages
        self.rounds += 1
        metrics().outbox_published.add(messages)

    async def _read(
        self, conn: asyncpg.Connection, min_age: float
    ) -> tuple[list[int], list[OutgoingMessage], float]:
        """Lock and read the oldest rows (at most ``batch``) in ``conn``'s transaction: their ids, their
        messages in order, and the age in seconds of the oldest (0 when none)."""
        rows = await conn.fetch(
            "SELECT id, subject, payload, msg_id, headers, core, "
            "extract(epoch FROM clock_timestamp() - created_at)::float8 AS age FROM outbox "
            "WHERE ($2::text IS NULL OR subject ~ $2) "
            "AND ($3::float8 = 0 OR created_at < clock_timestamp() - make_interval(secs => $3)) "
            "ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
            self.batch,
            self.subject_pattern,
            min_age,
        )
        msgs = [
            OutgoingMessage(
                subject=r["subject"],
                payload=r["payload"],
                msg_id=self._msg_id(r["id"], r["msg_id"]),
                headers=r["headers"] or {},
                core=r["core"],
            )
            for r in rows
        ]
        return [r["id"] for r in rows], msgs, max([0.0, *(r["age"] for r in rows)])


# The event relay's round (migration 0100): the take waits for the relays' session advisory lock and
# reads the oldest rows (giving the lock back when there are none); the release deletes what was
# published and gives the lock back.
TAKE_EVENTS = "SELECT id, subjects, payloads, msg_ids, age FROM event_outbox_take($1, $2)"
RELEASE_EVENTS = "SELECT event_outbox_release($1, $2::bigint[])"


class EventOutboxRelay(OutboxRelay):
    """Publishes the lifecycle events of ``event_outbox``: oldest row first, each row's events in the
    order its transaction wrote them, one JetStream message each under its own message id; the row is
    deleted once every PubAck came.

    The relays of all processes take turns under ``ordered_lock`` (one round at a time), so events go
    out in commit order. Nothing is handed over from memory: a process that commits events calls
    ``wake()``, and the poll finds those of processes that do not (the trigger's skipped runs).
    ``batch`` counts rows; a row holds one transaction's events."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        publisher: Publisher,
        *,
        ordered_lock: int,
        batch: int = 16,
        poll_interval: float = 0.5,
        pace: float = 0.0,
        name: str = "outbox-relay-notify",
    ) -> None:
        super().__init__(
            pool,
            publisher,
            batch=batch,
            poll_interval=poll_interval,
            name=name,
            pace=pace,
        )
        self.ordered_lock = ordered_lock

    @property
    def handoff_grace(self) -> float:
        return 0.0  # nothing is handed over: every row is read from the table

    def takes(self, subject: str) -> bool:
        return False  # rows of ``outbox`` are the other relay's

    async def relay_once(self, min_age: float = 0.0) -> int:
        """Publish one batch of the oldest rows, each row's events in order, and delete them: returns how
        many rows it relayed (0 = none). Two statements, no transaction block: the take (the relays'
        lock, then the rows) and, after every PubAck, the release (the delete, then the lock given back).
        ``min_age`` is unused: nothing is handed over, every row is this relay's to take.

        Should anything fail or be cancelled between the two, the connection is closed rather than put
        back in the pool: ending its session gives the lock back, and the rows not deleted are
        published again by the next round under the same message ids (JetStream drops the copies)."""
        async with self.pool.acquire() as conn:
            try:
                rows = await conn.fetch(TAKE_EVENTS, self.ordered_lock, self.batch)
                # The oldest row: how far publishing lags behind the commits (0 = caught up).
                metrics().outbox_lag.set(max([0.0, *(r["age"] for r in rows)]))
                if not rows:
                    return 0  # the take gave the lock back
                msgs = [
                    OutgoingMessage(subject, payload, msg_id=msg_id)
                    for r in rows
                    for subject, payload, msg_id in zip(
                        r["subjects"], r["payloads"], r["msg_ids"], strict=True
                    )
                ]
                await self.publisher.publish_many(msgs)
                await conn.execute(RELEASE_EVENTS, self.ordered_lock, [r["id"] for r in rows])
            except BaseException:
                conn.terminate()
                raise
        self._relayed(len(msgs))
        return len(rows)
