"""Partition ownership between scheduler replicas: Postgres lease rows with a fencing token.

Each replica heartbeats in ``scheduler_replica`` and aims to own ``ceil(P / live replicas)`` partitions.
A partition can be taken when its lease expired, or when its owner has the same replica name (that
replica restarted: the old process is gone). Every (re)acquisition by a new process bumps the token; every
actor transaction re-checks the token under ``FOR SHARE``, so a paused or partitioned old owner can
never commit a decision after its partition moved on.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Awaitable, Callable

import asyncpg

from legato.runtime.component import Component
from legato.telemetry import get_logger

log = get_logger("legato.scheduler")


class LeaseLost(Exception):
    """This process no longer owns the partition; the message goes back for its new owner."""


class PartitionLeaser(Component):
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
    ) -> None:
        super().__init__()
        self.pool = pool
        self.partitions = partitions
        self.replica = replica
        self.incarnation = uuid.uuid4().hex
        self.ttl = ttl
        self.renew_every = renew_every
        self.on_acquired = on_acquired
        self.on_lost = on_lost
        self.tokens: dict[int, int] = {}
        self.ready = asyncio.Event()

    def token(self, partition: int) -> int | None:
        return self.tokens.get(partition)

    async def check(self, conn: asyncpg.Connection, partition: int) -> None:
        """Inside an actor's transaction: fail unless this process still holds the partition."""
        token = self.tokens.get(partition)
        if token is None:
            raise LeaseLost(f"partition {partition} is not owned by this scheduler")
        ok = await conn.fetchval(
            "SELECT 1 FROM partition_lease WHERE partition = $1 AND incarnation = $2 AND token = $3 "
            "AND expires_at > now() FOR SHARE",
            partition,
            self.incarnation,
            token,
        )
        if ok is None:
            raise LeaseLost(f"partition {partition} lease lost")

    async def _run(self) -> None:
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
                # Past our own TTL we can no longer be sure we own anything: drop it all.
                if failures * self.renew_every >= self.ttl:
                    await self._lose(list(self.tokens))
            await self.sleep_or_stop(self.renew_every)
        await self._release_all()

    async def round(self) -> None:
        async with self.pool.acquire() as conn:
            live = await conn.fetchval(
                """
                WITH me AS (
                    INSERT INTO scheduler_replica (name, incarnation, heartbeat_at) VALUES ($1, $2, now())
                    ON CONFLICT (name) DO UPDATE SET incarnation = $2, heartbeat_at = now()
                )
                SELECT count(*) FROM scheduler_replica
                WHERE heartbeat_at > now() - make_interval(secs => $3) AND name <> $1
                """,
                self.replica,
                self.incarnation,
                self.ttl,
            )
            target = math.ceil(self.partitions / (int(live) + 1))
            # Renew what we hold.
            held = await conn.fetch(
                "UPDATE partition_lease SET expires_at = now() + make_interval(secs => $3) "
                "WHERE incarnation = $1 AND partition = ANY($2::int[]) RETURNING partition, token",
                self.incarnation,
                list(self.tokens),
                self.ttl,
            )
            still = {r["partition"]: r["token"] for r in held}
            lost = [p for p in self.tokens if p not in still]
            if lost:
                await self._lose(lost)
            # Give back what is above our fair share so other replicas can balance.
            extra = sorted(self.tokens)[target:]
            if extra:
                await self._lose(extra)
                await conn.execute(
                    "UPDATE partition_lease SET expires_at = now() WHERE incarnation = $1 AND partition = ANY($2::int[])",
                    self.incarnation,
                    extra,
                )
            # Take free, expired, or our own previous incarnation's partitions up to the target.
            want = target - len(self.tokens)
            if want <= 0:
                return
            for partition in range(self.partitions):
                if want <= 0:
                    break
                if partition in self.tokens:
                    continue
                token = await conn.fetchval(
                    """
                    INSERT INTO partition_lease (partition, owner, incarnation, token, expires_at)
                    VALUES ($1, $2, $3, 1, now() + make_interval(secs => $4))
                    ON CONFLICT (partition) DO UPDATE
                        SET owner = $2, incarnation = $3, token = partition_lease.token + 1,
                            expires_at = now() + make_interval(secs => $4)
                        WHERE partition_lease.expires_at < now() OR partition_lease.owner = $2
                    RETURNING token
                    """,
                    partition,
                    self.replica,
                    self.incarnation,
                    self.ttl,
                )
                if token is not None:
                    self.tokens[partition] = int(token)
                    want -= 1
                    log.info("partition_acquired", partition=partition, token=token)
                    await self.on_acquired(partition)

    async def _lose(self, partitions: list[int]) -> None:
        for p in partitions:
            if self.tokens.pop(p, None) is not None:
                log.warning("partition_released", partition=p)
                await self.on_lost(p)

    async def _release_all(self) -> None:
        held = list(self.tokens)
        await self._lose(held)
        if not held:
            return
        try:
            async with self.pool.acquire() as conn:
                await conn.execute(
                    "UPDATE partition_lease SET expires_at = now() WHERE incarnation = $1", self.incarnation
                )
                await conn.execute("DELETE FROM scheduler_replica WHERE incarnation = $1", self.incarnation)
        except Exception as exc:
            log.warning("lease_release_failed", error=repr(exc))
