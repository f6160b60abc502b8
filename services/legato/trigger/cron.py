"""Cron time triggers with time zones, exactly once per fire time.

Every active workflow's cron triggers are evaluated each tick. A fire is the key
``(workflow, trigger, fire_time)``: in one transaction the fire row is inserted (``ON CONFLICT DO
NOTHING``), the trigger's cursor advances, and the StartRun goes to the outbox with trigger key
``cron:<trigger>:<fire time>`` — so two trigger replicas, a restart, or a replayed tick never start
a run twice. After downtime the missed fires are caught up (oldest first, at most ``catch_up`` per
trigger); older ones are recorded as ``missed``, visible, never skipped silently. A trigger seen for
the first time starts from now (no backfill of history: use ``legato backfill`` for that).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg

from legato.bus.publisher import OutgoingMessage
from legato.bus.topology import Topology
from legato.core import CompiledWorkflow, compile_workflow, definition_from_json, to_json_value
from legato.core.cron import CronSchedule
from legato.protocol import encode
from legato.protocol.ids import instance_id_for
from legato.protocol.messages import StartRun, TriggerInfo
from legato.runtime.component import Component
from legato.store.outbox import add_to_outbox
from legato.telemetry import bind_context, get_logger

log = get_logger("legato.trigger")


class CronLoop(Component):
    name = "cron"

    def __init__(
        self,
        pool: asyncpg.Pool,
        topology: Topology,
        *,
        wake_relay: Callable[[], None],
        tick: float = 1.0,
        catch_up: int = 100,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__()
        self.pool = pool
        self.topology = topology
        self.wake_relay = wake_relay
        self.tick = tick
        self.catch_up = catch_up
        self.clock = clock
        self._compiled: dict[tuple[str, int], CompiledWorkflow] = {}
        self._schedules: dict[tuple[str, str, str], CronSchedule] = {}
        self.fired = 0

    async def _run(self) -> None:
        while not self.stopping:
            started = time.monotonic()
            try:
                await self.fire_due()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cron_round_failed", error=repr(exc))
            await self.sleep_or_stop(max(0.05, self.tick - (time.monotonic() - started)))

    async def _active_cron_workflows(self, conn: asyncpg.Connection) -> list[CompiledWorkflow]:
        rows = await conn.fetch(
            "SELECT w.id, w.active_version FROM workflow w JOIN workflow_version v "
            "ON v.workflow_id = w.id AND v.version = w.active_version "
            "WHERE w.active AND jsonb_path_exists(v.definition, '$.triggers[*] ? (@.type == \"cron\")')"
        )
        out: list[CompiledWorkflow] = []
        for r in rows:
            key = (r["id"], r["active_version"])
            compiled = self._compiled.get(key)
            if compiled is None:
                text = await conn.fetchval(
                    "SELECT definition::text FROM workflow_version WHERE workflow_id = $1 AND version = $2",
                    *key,
                )
                compiled = compile_workflow(definition_from_json(str(text).encode()))
                self._compiled[key] = compiled
            out.append(compiled)
        return out

    def _schedule(self, workflow_id: str, trigger: Any) -> CronSchedule:
        key = (workflow_id, trigger.cron, trigger.timezone)
        sched = self._schedules.get(key)
        if sched is None:
            sched = CronSchedule.parse(trigger.cron, trigger.timezone)
            self._schedules[key] = sched
        return sched

    async def fire_due(self) -> int:
        """Fire every due cron trigger once; returns how many runs were started."""
        now = self.clock()
        started = 0
        async with self.pool.acquire() as conn:
            workflows = await self._active_cron_workflows(conn)
        for compiled in workflows:
            for trigger in compiled.definition.triggers:
                if getattr(trigger, "type", None) != "cron":
                    continue
                with bind_context(workflow_id=compiled.definition.id):
                    started += await self._fire_trigger(compiled, trigger, now)
        if started:
            self.wake_relay()
        self.fired += started
        return started

    async def _fire_trigger(self, compiled: CompiledWorkflow, trigger: Any, now: datetime) -> int:
        wf = compiled.definition.id
        sched = self._schedule(wf, trigger)
        async with self.pool.acquire() as conn, conn.transaction():
            cursor = await conn.fetchval(
                "SELECT last_fire FROM cron_cursor WHERE workflow_id = $1 AND trigger_id = $2 FOR UPDATE SKIP LOCKED",
                wf,
                trigger.id,
            )
            if cursor is None:
                exists = await conn.fetchval(
                    "SELECT 1 FROM cron_cursor WHERE workflow_id = $1 AND trigger_id = $2", wf, trigger.id
                )
                if exists:
                    return 0  # another replica is firing this trigger right now
                await conn.execute(
                    "INSERT INTO cron_cursor (workflow_id, trigger_id, last_fire) VALUES ($1, $2, $3) "
                    "ON CONFLICT DO NOTHING",
                    wf,
                    trigger.id,
                    now,
                )
                return 0
            due = sched.fires_between(cursor, now, self.catch_up + 1)
            if not due:
                return 0
            missed: list[datetime] = []
            if len(due) > self.catch_up:
                # More fell due than we catch up on: record the oldest beyond the bound as missed.
                all_due = sched.fires_between(cursor, now, 100_000)
                missed = all_due[: len(all_due) - self.catch_up]
                due = all_due[len(all_due) - self.catch_up :]
            if missed:
                await conn.executemany(
                    "INSERT INTO cron_fire (workflow_id, trigger_id, fire_time, status) VALUES ($1, $2, $3, 'missed') "
                    "ON CONFLICT DO NOTHING",
                    [(wf, trigger.id, t) for t in missed],
                )
                log.warning("cron_fires_missed", workflow_id=wf, trigger=trigger.id, count=len(missed))
            msgs: list[OutgoingMessage] = []
            for fire_time in due:
                key = f"cron:{trigger.id}:{fire_time.astimezone(UTC).isoformat()}"
                instance_id = instance_id_for(wf, key)
                inserted = await conn.fetchval(
                    "INSERT INTO cron_fire (workflow_id, trigger_id, fire_time, instance_id, status) "
                    "VALUES ($1, $2, $3, $4, 'fired') ON CONFLICT DO NOTHING RETURNING 1",
                    wf,
                    trigger.id,
                    fire_time,
                    instance_id,
                )
                if inserted is None:
                    continue
                params = {
                    k: to_json_value(v)
                    for k, v in compiled.trigger_params(trigger.id, fire_time=fire_time).items()
                }
                start = StartRun(
                    workflow_id=wf,
                    trigger_key=key,
                    instance_id=instance_id,
                    trigger=TriggerInfo(
                        kind="cron", id=trigger.id, details={"fire_time": fire_time.isoformat()}
                    ),
                    params=params,
                    requested_at=time.time(),
                )
                msgs.append(
                    OutgoingMessage(
                        self.topology.trigger_subject(wf), encode(start), msg_id=f"start:{instance_id}"
                    )
                )
            await add_to_outbox(conn, msgs)
            await conn.execute(
                "UPDATE cron_cursor SET last_fire = $3, updated_at = now() WHERE workflow_id = $1 AND trigger_id = $2",
                wf,
                trigger.id,
                max(due),
            )
            if msgs:
                log.info("cron_fired", workflow_id=wf, trigger=trigger.id, runs=len(msgs))
            return len(msgs)
