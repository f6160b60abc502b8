"""The transactional outbox and its relay.

A transaction that must emit messages writes them with ``add_to_outbox`` on its own connection, so the
messages exist if and only if the transaction committed. The relay publishes them to NATS with
``Nats-Msg-Id`` = the row's message id and deletes them after the PubAck; a relay that crashes between
the two republishes with the same id and JetStream (then the consumer's durable dedup) drops the copy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg

from legato.bus.publisher import OutgoingMessage, Publisher
from legato.lifecycle.component import Component
from legato.telemetry import get_logger, metrics

log = get_logger("legato.store")


async def add_to_outbox(conn: asyncpg.Connection, messages: Sequence[OutgoingMessage]) -> None:
    """Write messages in the caller's transaction (one statement for the whole batch)."""
    if not messages:
        return
    await conn.execute(
        """
        INSERT INTO outbox (subject, payload, msg_id, headers, core)
        SELECT * FROM unnest($1::text[], $2::bytea[], $3::text[], $4::jsonb[], $5::boolean[])
        """,
        [m.subject for m in messages],
        [m.payload for m in messages],
        [m.msg_id for m in messages],
        [dict(m.headers) if m.headers else None for m in messages],
        [m.core for m in messages],
    )


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
        exclude: tuple[str, ...] = (),
        name: str | None = None,
        ordered_lock: int | None = None,
    ) -> None:
        """``kinds``: relay only rows on ``legato.<kind>.…`` subjects (the ones this service's NATS
        permissions let it publish, ``legato.security.permissions.relay_kinds``); None = every row.
        ``exclude``: never these kinds (another relay of the process has them). ``ordered_lock``: an
        advisory lock key that every relay of these kinds holds while it relays a batch, so across
        processes one batch is published at a time, in commit order (lifecycle events)."""
        super().__init__()
        self.ordered_lock = ordered_lock
        if name is not None:
            self.name = name
        self.pool = pool
        self.publisher = publisher
        self.batch = batch
        self.poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._db_token = ""
        self.published = 0
        self.rounds = 0
        self.subject_pattern = None if kinds is None else rf"^([^.]+\.)?legato\.({'|'.join(kinds)})\."
        self.exclude_pattern = rf"^([^.]+\.)?legato\.({'|'.join(exclude)})\." if exclude else None

    def wake(self) -> None:
        self._wake.set()

    def _on_shutdown(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        self._db_token = await self._database_token()
        failures = 0
        while True:
            try:
                # A round that found fewer rows than it may take took every row there was: rows
                # committed since are this process's own, whose commit wakes the relay again, or
                # another process's, which the poll finds. So no empty round follows every batch (at a
                # moderate rate, most batches are a few rows: that round was a third of the relay's
                # statements).
                while await self.relay_once() >= self.batch:
                    failures = 0
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.warning("outbox_relay_failed", error=repr(exc), failures=failures)
                if await self.sleep_or_stop(min(0.1 * 2**failures, 5.0)):
                    break
                continue
            if self.stopping:
                break
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)
            except TimeoutError:
                pass
            self._wake.clear()
        # Last pass so rows committed just before shutdown are not left to the next start.
        try:
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

    async def relay_once(self) -> int:
        """Publish and delete one batch; returns how many rows it relayed (0 = outbox empty)."""
        if not self._db_token:
            self._db_token = await self._database_token()
        async with self.pool.acquire() as conn, conn.transaction():
            if self.ordered_lock is not None:
                await conn.execute("SELECT pg_advisory_xact_lock($1)", self.ordered_lock)
            rows = await conn.fetch(
                "SELECT id, subject, payload, msg_id, headers, core, "
                "extract(epoch FROM clock_timestamp() - created_at)::float8 AS age FROM outbox "
                "WHERE ($2::text IS NULL OR subject ~ $2) AND ($3::text IS NULL OR subject !~ $3) "
                "ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                self.batch,
                self.subject_pattern,
                self.exclude_pattern,
            )
            # The oldest row this relay sees: how far publishing lags behind the commits (0 = caught up).
            metrics().outbox_lag.set(max([0.0, *(r["age"] for r in rows)]))
            if not rows:
                return 0
            msgs = [
                OutgoingMessage(
                    subject=r["subject"],
                    payload=r["payload"],
                    msg_id=r["msg_id"] or f"ob.{self._db_token}.{r['id']}",
                    headers=r["headers"] or {},
                    core=r["core"],
                )
                for r in rows
            ]
            await self.publisher.publish_many(msgs)
            await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", [r["id"] for r in rows])
        self.published += len(rows)
        self.rounds += 1
        metrics().outbox_published.add(len(rows))
        return len(rows)
