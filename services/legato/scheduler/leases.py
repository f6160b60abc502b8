"""Partition ownership between scheduler replicas: Postgres lease rows with a fencing token.

Each replica holds a session advisory lock on its name (one live process per replica id), heartbeats
in ``scheduler_replica`` and aims to own ``ceil(P / live replicas)`` partitions. A partition can be
taken when its lease expired, or when its owner has the same replica name (that replica restarted: the
name lock proves the old process is gone). Every (re)acquisition bumps the token; every actor
transaction re-checks the token under ``FOR KEY SHARE`` right before it commits, so a paused or
partitioned old owner can never commit a decision after its partition moved on.

Nothing here ever waits on a row another process holds:

- renewal and heartbeat run in their own task on their own connection, and only update this process's
  rows with a plain ``UPDATE`` (which ``FOR KEY SHARE`` does not block);
- acquisition takes candidate rows ``FOR UPDATE SKIP LOCKED``: a row that a paused owner's transaction
  still holds is skipped until Postgres ends that transaction (from its final lease check on, an actor
  transaction's ``idle_in_transaction_session_timeout`` is below the lease time);
- releases (rebalancing) run concurrently, outside the balancing round;
- expiry is computed with ``clock_timestamp()``, never the transaction's start time;
- a replica stopped in the middle of a statement (SIGSTOP, a frozen VM) leaves its session ``active``,
  where no idle timeout of Postgres applies, still holding the row locks of its transaction: every
  balancing round ends the transactions of replicas whose heartbeat expired (their sessions carry the
  incarnation in ``application_name``, see ``session_name``). Nothing is lost by it: such a transaction
  could not commit past the lease check, and its message is redelivered;
- the same goes for a stopped replica's session that holds an advisory lock outside any transaction:
  the lifecycle-event relays take turns under one held from a round's read to its delete
  (``store/outbox.py``), and a replica stopped between the two would hold every replica's events back.
  Its rows stay in the table and the next relay publishes them under their message ids.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from legato.lifecycle.component import Component
from legato.store import create_pool
from legato.telemetry import get_logger

log = get_logger("legato.scheduler")

# Advisory-lock namespace of replica names (pg_try_advisory_lock on hashtextextended(name, this)).
REPLICA_LOCK_SEED = 0x1E6A70
# The application_name of a scheduler's work sessions: this prefix, then the incarnation.
SESSION_PREFIX = "legato-scheduler "


def new_incarnation() -> str:
    """A fresh id for one scheduler process (it names the process's lease rows and sessions)."""
    return uuid.uuid4().hex


def session_name(incarnation: str) -> str:
    """The ``application_name`` of one scheduler process's pool (its lease connection has another)."""
    return SESSION_PREFIX + incarnation


# Transactions, older than the lease time, of scheduler processes whose heartbeat expired, and their
# sessions that hold an advisory lock while idle as long (the event relays' turn): ended so that their
# locks stop blocking the living. A process that has not heartbeated yet has no row and is left alone
# (a new version's migrations at start may take longer than the lease time).
END_STOPPED = f"""
SELECT a.pid, a.state, pg_terminate_backend(a.pid) AS ended
FROM pg_stat_activity a
WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
  AND a.application_name LIKE '{SESSION_PREFIX}%' AND a.application_name <> $1
  AND (a.xact_start < clock_timestamp() - make_interval(secs => $2)
       OR (a.state = 'idle' AND a.state_change < clock_timestamp() - make_interval(secs => $2)
           AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted)))
  AND EXISTS (
      SELECT 1 FROM scheduler_replica r
      WHERE '{SESSION_PREFIX}' || r.incarnation = a.application_name
        AND r.heartbeat_at <= clock_timestamp() - make_interval(secs => $2))
"""


class LeaseLost(Exception):
    """This process no longer owns the partition; the message goes back for its new owner."""


class ReplicaIdInUse(ConnectionError):
    """Another live scheduler process holds this replica id (a start-up error reported in one line)."""


@dataclass(frozen=True, slots=True)
class LeaseGuard:
    """One lease check as a scalar subquery: true while the lease holds, NULL once it is lost. It sets
    the transaction's idle timeout as it runs."""

    partition: int
    final: bool
    args: tuple[int, str, int, str]

    def sql(self, first: int) -> str:
        """The subquery, its arguments (``args``) numbered from ``$first``."""
        p, inc, tok, timeout = (f"${first + i}" for i in range(4))
        return (
            f"(SELECT set_config('idle_in_transaction_session_timeout', {timeout}::text, true) IS NOT NULL "
            f"FROM partition_lease WHERE partition = {p}::int AND incarnation = {inc}::text "
            f"AND token = {tok}::bigint AND expires_at > clock_timestamp()"
            + (" FOR KEY SHARE)" if self.final else ")")
        )

    def verify(self, ok: bool | None) -> None:
        """Raise ``LeaseLost`` unless the subquery found the lease."""
        if ok is None:
            raise LeaseLost(f"partition {self.partition} lease lost")

    async def check(self, conn: asyncpg.Connection) -> None:
        """Run the check as a statement of its own (when no statement of the transaction carries it)."""
        self.verify(await conn.fetchval(f"SELECT {self.sql(1)}", *self.args))


class PartitionLeaser(Component):
    """Takes, renews and gives up partition leases so each partition has one scheduler replica."""

    name = "partition-leaser"
    shutdown_stage = 2  # leases go last, once no actor can commit any more

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        partitions: int,
        replica: str,
        ttl: float = 10.0,
        renew_every: float = 2.0,
        on_acquired: Callable[[int], Awaitable[None]],
        on_lost: Callable[[int], Awaitable[None]],
        database_url: str | None = None,
        name_wait: float | None = None,
        on_fatal: Callable[[], None] = lambda: None,
        incarnation: str | None = None,
    ) -> None:
        """``incarnation``: this process's id, the one its ``pool`` names its sessions with
        (``session_name``); a new one when not given."""
        super().__init__()
        self.pool = pool
        self.partitions = partitions
        self.replica = replica
        self.incarnation = incarnation or new_incarnation()
        self._may_end_sessions = True
        self.ttl = ttl
        self.renew_every = renew_every
        self.on_acquired = on_acquired
        self.on_lost = on_lost
        self.database_url = database_url
        self.name_wait = ttl * 2 if name_wait is None else name_wait
        self.on_fatal = on_fatal
        self.tokens: dict[int, int] = {}
        self.ready = asyncio.Event()
        self._releasing: dict[int, asyncio.Task[None]] = {}
        self._own_pool: asyncpg.Pool | None = None
        self._conn: asyncpg.Connection | None = None

    # -- what actors ask -------------------------------------------------------------------------

    def token(self, partition: int) -> int | None:
        return self.tokens.get(partition)

    @property
    def work_idle_timeout_ms(self) -> int:
        """How long an actor transaction may sit idle while it computes (a paused process holding a
        workflow row is ended after this): generous, so that legitimate big batches never hit it."""
        return int(max(2 * self.ttl, 10.0) * 1000)

    @property
    def commit_idle_timeout_ms(self) -> int:
        """From the final lease check to the commit: below the lease time, so a process paused while
        it holds its lease row is ended before the lease could be taken over."""
        return max(200, int(self.ttl * 1000 / 2))

    def guard(self, partition: int, *, final: bool = False) -> LeaseGuard:
        """The lease check of an actor's transaction, to ride in one of its statements
        (``LeaseGuard.check`` runs it alone): fails at once unless this process still holds the partition.

        At the start (``final=False``) a plain read, to fail fast; in the transaction's last statement
        (``final=True``) under ``FOR KEY SHARE``, which keeps the lease from moving until the commit (a
        taker's ``FOR UPDATE SKIP LOCKED`` passes it by) without delaying this process's own renewals.
        Each also bounds how long the transaction may stay idle (see the two timeouts above)."""
        token = self.tokens.get(partition)
        if token is None:
            raise LeaseLost(f"partition {partition} is not owned by this scheduler")
        timeout = self.commit_idle_timeout_ms if final else self.work_idle_timeout_ms
        return LeaseGuard(partition, final, (partition, self.incarnation, token, str(timeout)))

    # -- the replica name ------------------------------------------------------------------------

    async def claim_name(self) -> None:
        """Take this replica id's lock on a dedicated connection; refuse when a live process holds it.

        A process that died (even by kill -9) releases it as soon as Postgres sees its socket close, so
        waiting a little covers an immediate restart."""
        url = self.database_url
        if url is None:
            raise RuntimeError("PartitionLeaser needs database_url to claim its replica id")
        self._own_pool = await create_pool(
            url, min_size=1, max_size=1, application_name="legato-scheduler-lease"
        )
        conn = self._conn = await self._own_pool.acquire()
        await conn.execute(
            f"SET lock_timeout = '{max(100, int(self.ttl * 250))}ms'; "
            f"SET statement_timeout = '{max(500, int(self.ttl * 500))}ms'"
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.name_wait
        while True:
            got = await conn.fetchval(
                "SELECT pg_try_advisory_lock(hashtextextended($1, $2))", self.replica, REPLICA_LOCK_SEED
            )
            if got:
                break
            if loop.time() >= deadline:
                await self._close_own()
                raise ReplicaIdInUse(
                    f"replica id {self.replica!r} is held by another live scheduler process; give each "
                    f"scheduler its own --replica-id (or LEGATO_REPLICA_ID)"
                )
            await asyncio.sleep(0.25)
        await conn.execute(
            "INSERT INTO partition_lease (partition, owner, incarnation, token, expires_at) "
            "SELECT g, '', '', 0, '-infinity' FROM generate_series(0, $1 - 1) g ON CONFLICT DO NOTHING",
            self.partitions,
        )
        log.info("replica_id_claimed", replica=self.replica, incarnation=self.incarnation)

    async def _close_own(self) -> None:
        """Close the name-lock connection (ending the session frees the replica id)."""
        pool, conn, self._own_pool, self._conn = self._own_pool, self._conn, None, None
        if pool is None:
            return
        try:
            if conn is not None:
                await asyncio.wait_for(pool.release(conn), timeout=2.0)
            await asyncio.wait_for(pool.close(), timeout=2.0)
        except Exception:
            pool.terminate()

    # -- lifetime --------------------------------------------------------------------------------

    async def _run(self) -> None:
        if self._conn is None:
            await self.claim_name()
        renew = asyncio.create_task(self._renew_loop(), name="lease-renewal")
        try:
            failures = 0
            while not self.stopping:
                try:
                    await self.round()
                    failures = 0
                    self.ready.set()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failures += 1
                    log.warning("lease_round_failed", error=repr(exc), failures=failures)
                await self.sleep_or_stop(self.renew_every)
        finally:
            renew.cancel()
            await asyncio.gather(renew, return_exceptions=True)
            await self._release_all()
            await self._close_own()

    async def _renew_loop(self) -> None:
        """Heartbeat and renew what this process holds, never waiting on the balancing round."""
        last_ok = asyncio.get_running_loop().time()
        while True:
            try:
                # Bounded on this side too: a Postgres that hangs (rather than refuses) must not keep
                # this process believing it owns partitions past its lease time.
                await asyncio.wait_for(self.renew(), timeout=max(0.5, self.ttl / 2))
                last_ok = asyncio.get_running_loop().time()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("lease_renewal_failed", error=repr(exc))
                if isinstance(exc, asyncpg.InterfaceError | asyncpg.PostgresConnectionError | OSError):
                    await self._reconnect()
                # Past our own TTL we can no longer be sure we own anything: drop it all.
                if asyncio.get_running_loop().time() - last_ok >= self.ttl:
                    self._lose(list(self.tokens))
            await asyncio.sleep(self.renew_every)

    async def _reconnect(self) -> None:
        """The renewal connection broke (and with it the name lock): take both again, or step down."""
        self._lose(list(self.tokens))
        await self._close_own()
        try:
            await self.claim_name()
        except ReplicaIdInUse as exc:
            log.error("replica_id_taken_over", replica=self.replica, error=str(exc))
            self.on_fatal()
            self.request_shutdown()
        except Exception as exc:
            log.warning("lease_reconnect_failed", error=repr(exc))

    async def renew(self) -> None:
        conn = self._conn
        if conn is None:
            raise asyncpg.InterfaceError("no lease connection")
        held = list(self.tokens)  # partitions being handed back too: their in-flight work may still commit
        rows = await conn.fetch(
            """
            WITH me AS (
                INSERT INTO scheduler_replica (name, incarnation, heartbeat_at)
                VALUES ($1, $2, clock_timestamp())
                ON CONFLICT (name) DO UPDATE SET incarnation = $2, heartbeat_at = clock_timestamp()
            )
            UPDATE partition_lease SET expires_at = clock_timestamp() + make_interval(secs => $4)
            WHERE incarnation = $2 AND partition = ANY($3::int[]) RETURNING partition, token
            """,
            self.replica,
            self.incarnation,
            held,
            self.ttl,
        )
        still = {r["partition"]: r["token"] for r in rows}
        self._lose([p for p in held if self.tokens.get(p) is not None and still.get(p) != self.tokens[p]])

    async def round(self) -> None:
        """Balance: give back what is above the fair share (in the background), take free partitions."""
        if self._conn is None:
            return  # not holding the replica id (reconnecting): own nothing
        async with self.pool.acquire() as conn:
            await self._end_stopped_transactions(conn)
            live = await conn.fetchval(
                "SELECT count(*) FROM scheduler_replica "
                "WHERE heartbeat_at > clock_timestamp() - make_interval(secs => $2) OR name = $1",
                self.replica,
                self.ttl,
            )
            target = math.ceil(self.partitions / max(1, int(live)))
            kept = sorted(p for p in self.tokens if p not in self._releasing)
            for p in kept[target:]:
                self._releasing[p] = asyncio.create_task(self._release(p), name=f"release:{p}")
            want = target - len(kept)
            if want <= 0:
                return
            rows = await conn.fetch(
                """
                WITH cand AS (
                    SELECT partition FROM partition_lease
                    WHERE partition < $4 AND NOT partition = ANY($6::int[])
                      AND (expires_at < clock_timestamp() OR (owner = $1 AND incarnation <> $2))
                    ORDER BY partition LIMIT $5
                    FOR UPDATE SKIP LOCKED
                )
                UPDATE partition_lease l
                SET owner = $1, incarnation = $2, token = l.token + 1,
                    expires_at = clock_timestamp() + make_interval(secs => $3)
                FROM cand WHERE l.partition = cand.partition
                RETURNING l.partition, l.token
                """,
                self.replica,
                self.incarnation,
                self.ttl,
                self.partitions,
                want,
                list(self._releasing),
            )
        for r in sorted(rows, key=lambda r: int(r["partition"])):
            partition, token = int(r["partition"]), int(r["token"])
            self.tokens[partition] = token
            log.info("partition_acquired", partition=partition, token=token)
            await self.on_acquired(partition)

    async def _end_stopped_transactions(self, conn: asyncpg.Connection) -> None:
        """End the open transactions of scheduler processes that stopped heartbeating (see the module
        docstring); a database role without the right to do so only loses this help, said once."""
        if not self._may_end_sessions:
            return
        try:
            rows = await conn.fetch(END_STOPPED, session_name(self.incarnation), self.ttl)
        except asyncpg.InsufficientPrivilegeError as exc:
            self._may_end_sessions = False
            log.warning("stopped_replica_sessions_not_ended", error=str(exc))
            return
        for r in rows:
            log.warning("stopped_replica_transaction_ended", pid=r["pid"], state=r["state"], ended=r["ended"])

    async def _release(self, partition: int) -> None:
        """Hand one partition back: stop its consumers and actors, then expire the row for others."""
        try:
            await self.on_lost(partition)
            token = self.tokens.pop(partition, None)
            if token is not None:
                log.info("partition_released", partition=partition)
                async with self.pool.acquire() as conn:
                    await conn.execute(
                        "UPDATE partition_lease SET expires_at = clock_timestamp() "
                        "WHERE partition = $1 AND incarnation = $2 AND token = $3",
                        partition,
                        self.incarnation,
                        token,
                    )
        except Exception as exc:
            log.warning("partition_release_failed", partition=partition, error=repr(exc))
        finally:
            self._releasing.pop(partition, None)

    def _lose(self, partitions: list[int]) -> None:
        """Partitions this process found it no longer owns: forget them now, stop their work behind."""
        for p in partitions:
            if self.tokens.pop(p, None) is not None:
                log.warning("partition_lost", partition=p)
                task = asyncio.create_task(self._stop_lost(p), name=f"lost:{p}")
                self._releasing.setdefault(p, task)

    async def _stop_lost(self, partition: int) -> None:
        try:
            await self.on_lost(partition)
        except Exception as exc:
            log.warning("partition_stop_failed", partition=partition, error=repr(exc))
        finally:
            if self._releasing.get(partition) is asyncio.current_task():
                del self._releasing[partition]

    async def _release_all(self) -> None:
        for p in list(self.tokens):
            if p not in self._releasing:
                self._releasing[p] = asyncio.create_task(self._release(p), name=f"release:{p}")
        if self._releasing:
            await asyncio.gather(*self._releasing.values(), return_exceptions=True)
        try:
            async with self.pool.acquire() as conn:
                await conn.execute(
                    "UPDATE partition_lease SET expires_at = clock_timestamp() WHERE incarnation = $1",
                    self.incarnation,
                )
                await conn.execute("DELETE FROM scheduler_replica WHERE incarnation = $1", self.incarnation)
        except Exception as exc:
            log.warning("lease_release_failed", error=repr(exc))
