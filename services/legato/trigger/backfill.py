"""Backfills: one run per period of a date range, as a first-class object with a lifecycle.

``backfill.start`` splits ``[from, to]`` into periods (``step`` long; the last period starts at or
before ``to``) and stores one row per period. Each period's run has its own trigger key,
``backfill:<period start>/<period end>[:<params digest>]`` — not the backfill's id — so starting the
same backfill again starts nothing new, and extending the range starts only the new periods (the
others are recorded as ``existing``). ``dry_run`` says what would be created or skipped, with no effect.

The :class:`BackfillLoop` submits pending periods oldest first, never more than the backfill's
``concurrency`` queued or running at once; the runs then go through the workflow's run strategy like
any other (a backfill never breaks ``strict_sequential`` or a parallel limit). Replicas share the
work under ``FOR UPDATE SKIP LOCKED``; a run id is derived from its key, so a period submitted twice
still starts once. ``pause`` stops submitting, ``cancel`` also marks pending periods cancelled and
stops queued (optionally running) runs, with who and why; ``retry_failed`` restarts only the failed
periods' runs, within the same concurrency limit.

Param values may contain ``${backfill.period_start}`` and ``${backfill.period_end}`` (a date when the
range and step are whole days, else an ISO time).

``priority`` (``low`` by default, ``normal``, ``high``) goes into each run's trigger info; a workflow's
queued runs start by (priority, arrival) within its run strategy (``legato.core.admission.queue_priority``),
so by default every live run queued meanwhile starts before the backfill's next run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from legato.bus.publisher import OutgoingMessage
from legato.bus.topology import Topology
from legato.core import CompiledWorkflow, compile_workflow, definition_from_json
from legato.core.admission import BACKFILL_PRIORITIES
from legato.core.durations import parse_duration
from legato.core.errors import DefinitionError
from legato.core.statuses import ACTIVE_INSTANCE, TERMINAL_INSTANCE, InstanceStatus
from legato.lifecycle.component import Component
from legato.protocol import api, encode
from legato.protocol.api import ApiError
from legato.protocol.ids import instance_id_for, new_request_id
from legato.protocol.messages import ActionKind, StartRun, TriggerInfo
from legato.protocol.replies import BackfillInfo, BackfillList, BackfillStarted
from legato.store.outbox import add_to_outbox
from legato.telemetry import get_logger
from legato.trigger import registry
from legato.trigger.action_api import action_message
from legato.trigger.endpoints import Endpoint, typed
from legato.trigger.instances import iso
from legato.trigger.run_params import check_run_params

log = get_logger("legato.trigger")

MAX_PERIODS = 100_000
MAX_CONCURRENCY = 1000
MAX_REASON = 1000
DRY_RUN_SHOWN = 50
PERIOD_TEMPLATES = ("${backfill.period_start}", "${backfill.period_end}")


def parse_bound(text: str, name: str) -> tuple[datetime, bool]:
    """A ``--from``/``--to`` value as a UTC time, and whether it was a plain date."""
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC), True
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ApiError(
            "bad_request", f"{name}: expected a date (YYYY-MM-DD) or an ISO 8601 time, got {text!r}"
        ) from None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC), False


def periods_of(start: datetime, end: datetime, step: timedelta) -> list[tuple[datetime, datetime]]:
    if end < start:
        raise ApiError(
            "bad_request", f"to: must not be before from ({start.isoformat()}), got {end.isoformat()}"
        )
    count = int((end - start) / step) + 1
    if count > MAX_PERIODS:
        raise ApiError(
            "bad_request", f"{count} periods: at most {MAX_PERIODS} per backfill (use a larger step)"
        )
    return [(start + i * step, start + (i + 1) * step) for i in range(count)]


def period_text(value: datetime, whole_days: bool) -> str:
    return value.date().isoformat() if whole_days else value.isoformat()


def period_params(params: dict[str, Any], start: str, end: str) -> dict[str, Any]:
    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace(PERIOD_TEMPLATES[0], start).replace(PERIOD_TEMPLATES[1], end)
        return value

    return {k: fill(v) for k, v in params.items()}


def period_key(start: datetime, end: datetime, params: dict[str, Any]) -> str:
    key = f"backfill:{start.isoformat()}/{end.isoformat()}"
    if params:
        canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
        key += ":" + hashlib.sha256(canonical.encode()).hexdigest()[:16]
    return key


class BackfillApi:
    def __init__(
        self,
        pool: asyncpg.Pool,
        topology: Topology,
        *,
        wake_relay: Callable[[], None],
        wake_feeder: Callable[[], None] = lambda: None,
    ) -> None:
        self.wake_feeder = wake_feeder
        self.pool = pool
        self.topology = topology
        self.wake_relay = wake_relay

    def endpoints(self) -> dict[str, Endpoint]:
        return {
            "backfill.start": (api.StartBackfill, typed(self.start, BackfillStarted)),
            "backfill.list": (api.ListBackfills, typed(self.list, BackfillList)),
            "backfill.show": (api.BackfillRef, typed(self.show, BackfillInfo)),
            "backfill.pause": (api.BackfillRef, typed(self.pause, BackfillInfo)),
            "backfill.resume": (api.BackfillRef, typed(self.resume, BackfillInfo)),
            "backfill.cancel": (api.CancelBackfill, typed(self.cancel, BackfillInfo)),
            "backfill.retry_failed": (api.BackfillRef, typed(self.retry_failed, BackfillInfo)),
        }

    async def _compiled(
        self, conn: asyncpg.Connection, workflow_id: str
    ) -> tuple[asyncpg.Record, CompiledWorkflow]:
        row = await registry.get_workflow_row(conn, workflow_id)
        if not row["active"]:
            raise ApiError(
                "inactive",
                f"workflow {workflow_id!r} is inactive: activate it first",
                {"workflow_id": workflow_id},
            )
        text = await registry.load_definition(conn, workflow_id, row["active_version"])
        return row, compile_workflow(definition_from_json(text.encode()))

    async def start(self, req: api.StartBackfill) -> dict[str, Any]:
        start, start_is_date = parse_bound(req.start, "from")
        end, end_is_date = parse_bound(req.end, "to")
        try:
            seconds = parse_duration(req.step, "step")
        except DefinitionError as exc:
            raise ApiError("bad_request", str(exc)) from None
        if seconds < 60:
            raise ApiError("bad_request", f"step: must be at least 1m, got {req.step!r}")
        if not 1 <= req.concurrency <= MAX_CONCURRENCY:
            raise ApiError("bad_request", f"concurrency: must be 1..{MAX_CONCURRENCY}, got {req.concurrency}")
        if req.priority not in BACKFILL_PRIORITIES:
            raise ApiError(
                "bad_request",
                f"priority: must be one of {', '.join(BACKFILL_PRIORITIES)}, got {req.priority!r}",
            )
        step = timedelta(seconds=seconds)
        periods = periods_of(start, end, step)
        whole_days = start_is_date and end_is_date and seconds % 86400 == 0
        async with self.pool.acquire() as conn:
            row, compiled = await self._compiled(conn, req.workflow_id)
            planned = []
            for ps, pe in periods:
                params = period_params(req.params, period_text(ps, whole_days), period_text(pe, whole_days))
                key = period_key(ps, pe, req.params)
                planned.append((ps, pe, key, instance_id_for(req.workflow_id, key), params))
            self._check_params(compiled, req.workflow_id, row["active_version"], planned[0][4], planned[0][3])
            existing = {
                r["trigger_key"]: r["status"]
                for r in await conn.fetch(
                    "SELECT trigger_key, status FROM workflow_instance WHERE workflow_id = $1 "
                    "AND trigger_key = ANY($2::text[])",
                    req.workflow_id,
                    [p[2] for p in planned],
                )
            }
            in_flight = {
                r["trigger_key"]
                for r in await conn.fetch(
                    "SELECT p.trigger_key FROM backfill_period p JOIN backfill b ON b.id = p.backfill_id "
                    "WHERE b.workflow_id = $1 AND p.state IN ('pending', 'submitted') AND b.status <> 'cancelled' "
                    "AND p.trigger_key = ANY($2::text[])",
                    req.workflow_id,
                    [p[2] for p in planned],
                )
            }
        actions = []
        for ps, pe, key, iid, params in planned:
            if key in existing:
                action = "skip" if existing[key] != "failed" else "skip_failed"
            elif key in in_flight:
                action = "skip"
            else:
                action = "create"
            actions.append((ps, pe, key, iid, params, action))
        counts = {a: sum(1 for x in actions if x[5] == a) for a in ("create", "skip", "skip_failed")}
        strategy = {"run_strategy": row["run_strategy"], "max_concurrency": row["max_concurrency"]}
        if req.dry_run:
            return {
                "dry_run": True,
                "workflow_id": req.workflow_id,
                "periods": len(actions),
                "would_create": counts["create"],
                "already_done": counts["skip"],
                "already_failed": counts["skip_failed"],
                "strategy": strategy,
                "concurrency": req.concurrency,
                "priority": req.priority,
                "plan": [
                    {
                        "period_start": ps.isoformat(),
                        "period_end": pe.isoformat(),
                        "action": action,
                        "status": existing.get(key),
                        "params": params,
                    }
                    for ps, pe, key, _iid, params, action in actions[:DRY_RUN_SHOWN]
                ],
            }
        backfill_id = "bf-" + new_request_id()[:12]
        status = "running" if counts["create"] else "done"
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO backfill (id, workflow_id, version, range_from, range_to, step_seconds, params, "
                "concurrency, status, created_by, total, finished_at, priority) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, CASE WHEN $9 = 'done' THEN now() END, $12)",
                backfill_id,
                req.workflow_id,
                row["active_version"],
                start,
                end,
                seconds,
                req.params,
                req.concurrency,
                status,
                req.actor,
                len(actions),
                req.priority,
            )
            await conn.execute(
                "INSERT INTO backfill_period (backfill_id, period_start, period_end, trigger_key, instance_id, "
                "params, state) SELECT $1, ps, pe, k, i, p::jsonb, st FROM unnest($2::timestamptz[], "
                "$3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::text[]) AS u (ps, pe, k, i, p, st)",
                backfill_id,
                [a[0] for a in actions],
                [a[1] for a in actions],
                [a[2] for a in actions],
                [a[3] for a in actions],
                [json.dumps(a[4]) for a in actions],
                ["pending" if a[5] == "create" else "existing" for a in actions],
            )
        self.wake_relay()
        self.wake_feeder()
        log.info(
            "backfill_started", backfill_id=backfill_id, workflow_id=req.workflow_id, periods=len(actions)
        )
        return {
            "backfill_id": backfill_id,
            "workflow_id": req.workflow_id,
            "periods": len(actions),
            "created": counts["create"],
            "already_done": counts["skip"],
            "already_failed": counts["skip_failed"],
            "status": status,
            "strategy": strategy,
            "concurrency": req.concurrency,
            "priority": req.priority,
        }

    def _check_params(
        self, compiled: CompiledWorkflow, workflow_id: str, version: int, params: dict[str, Any], iid: str
    ) -> None:
        check_run_params(
            compiled,
            params,
            workflow_id=workflow_id,
            version=version,
            instance_id=iid,
            trigger_kind="backfill",
            now=datetime.now(UTC),
        )

    async def list(self, req: api.ListBackfills) -> dict[str, Any]:
        limit = max(1, min(req.limit, 500))
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT {BACKFILL_COLUMNS} FROM backfill WHERE ($1::text IS NULL OR workflow_id = $1) "
                "ORDER BY created_at DESC, id LIMIT $2",
                req.workflow_id,
                limit,
            )
            out = [await summary(conn, r) for r in rows]
        return {"backfills": out}

    async def show(self, req: api.BackfillRef) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            row = await _get(conn, req.backfill_id)
            out = await summary(conn, row)
            failed = await conn.fetch(
                "SELECT p.period_start, p.instance_id, i.error FROM backfill_period p "
                "JOIN workflow_instance i ON i.id = p.instance_id WHERE p.backfill_id = $1 "
                "AND p.state = 'submitted' AND i.status IN ('failed', 'timed_out') ORDER BY p.period_start LIMIT 20",
                req.backfill_id,
            )
        out["failed_periods"] = [
            {"period_start": iso(r["period_start"]), "instance_id": r["instance_id"], "error": r["error"]}
            for r in failed
        ]
        return out

    async def _set_status(self, backfill_id: str, allowed: tuple[str, ...], status: str) -> dict[str, Any]:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await _get(conn, backfill_id, lock=True)
            if row["status"] not in allowed:
                raise ApiError(
                    "not_applicable",
                    f"backfill {backfill_id} is {row['status']}: cannot become {status}",
                    {"backfill_id": backfill_id, "status": row["status"]},
                )
            await conn.execute(
                "UPDATE backfill SET status = $2, updated_at = now() WHERE id = $1", backfill_id, status
            )
            out = await summary(conn, await _get(conn, backfill_id))
        self.wake_relay()
        return out

    async def pause(self, req: api.BackfillRef) -> dict[str, Any]:
        return await self._set_status(req.backfill_id, ("running", "paused"), "paused")

    async def resume(self, req: api.BackfillRef) -> dict[str, Any]:
        out = await self._set_status(req.backfill_id, ("paused", "running"), "running")
        self.wake_feeder()
        return out

    async def cancel(self, req: api.CancelBackfill) -> dict[str, Any]:
        if not req.reason.strip():
            raise ApiError("bad_request", "cancel: a reason is required (--reason)")
        if len(req.reason) > MAX_REASON:
            raise ApiError("bad_request", f"reason: at most {MAX_REASON} characters, got {len(req.reason)}")
        stop = ACTIVE_INSTANCE if req.running else (InstanceStatus.QUEUED,)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await _get(conn, req.backfill_id, lock=True)
            if row["status"] == "cancelled":
                return await summary(conn, row)
            await conn.execute(
                "UPDATE backfill SET status = 'cancelled', cancelled_by = $2, cancel_reason = $3, "
                "finished_at = now(), updated_at = now() WHERE id = $1",
                req.backfill_id,
                req.actor,
                req.reason,
            )
            await conn.execute(
                "UPDATE backfill_period SET state = 'cancelled' WHERE backfill_id = $1 AND state IN ('pending', 'retry')",
                req.backfill_id,
            )
            runs = await conn.fetch(
                "SELECT i.id FROM backfill_period p JOIN workflow_instance i ON i.id = p.instance_id "
                "WHERE p.backfill_id = $1 AND p.state = 'submitted' AND i.status = ANY($2::text[])",
                req.backfill_id,
                list(stop),
            )
            why = f"backfill {req.backfill_id} cancelled: {req.reason}"
            await add_to_outbox(
                conn,
                [_action(self.topology, row["workflow_id"], "stop", r["id"], why, req.actor) for r in runs],
            )
            out = await summary(conn, await _get(conn, req.backfill_id))
        self.wake_relay()
        log.info("backfill_cancelled", backfill_id=req.backfill_id, actor=req.actor, stopped=len(runs))
        return {**out, "stopped_runs": len(runs)}

    async def retry_failed(self, req: api.BackfillRef) -> dict[str, Any]:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await _get(conn, req.backfill_id, lock=True)
            if row["status"] == "cancelled":
                raise ApiError("not_applicable", f"backfill {req.backfill_id} is cancelled")
            marked = await conn.fetch(
                "UPDATE backfill_period p SET state = 'retry' FROM workflow_instance i WHERE i.id = p.instance_id "
                "AND p.backfill_id = $1 AND p.state = 'submitted' AND i.status IN ('failed', 'timed_out') "
                "RETURNING p.period_start",
                req.backfill_id,
            )
            if marked and row["status"] == "done":
                await conn.execute(
                    "UPDATE backfill SET status = 'running', finished_at = NULL, updated_at = now() WHERE id = $1",
                    req.backfill_id,
                )
            out = await summary(conn, await _get(conn, req.backfill_id))
        self.wake_relay()
        self.wake_feeder()
        return {**out, "retrying": len(marked)}


BACKFILL_COLUMNS = (
    "id, workflow_id, version, range_from, range_to, step_seconds, params, concurrency, status, created_by, "
    "created_at, finished_at, cancelled_by, cancel_reason, total, priority"
)


async def _get(conn: asyncpg.Connection, backfill_id: str, *, lock: bool = False) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"SELECT {BACKFILL_COLUMNS} FROM backfill WHERE id = $1" + (" FOR UPDATE" if lock else ""),
        backfill_id,
    )
    if row is None:
        raise ApiError("not_found", f"unknown backfill {backfill_id!r}", {"backfill_id": backfill_id})
    return row


async def summary(conn: asyncpg.Connection, r: asyncpg.Record) -> dict[str, Any]:
    """The backfill with its periods counted by status, throughput and an ETA."""
    counts: dict[str, int] = {}
    for c in await conn.fetch(
        "SELECT CASE WHEN p.state = 'submitted' THEN coalesce(i.status, 'starting') "
        "WHEN p.state = 'existing' THEN 'existing' ELSE p.state END AS s, count(*) AS n "
        "FROM backfill_period p LEFT JOIN workflow_instance i ON i.id = p.instance_id "
        "WHERE p.backfill_id = $1 GROUP BY 1",
        r["id"],
    ):
        counts[c["s"]] = c["n"]
    timing = await conn.fetchrow(
        "SELECT min(p.submitted_at) AS first, count(*) FILTER (WHERE i.status = 'succeeded') AS done "
        "FROM backfill_period p LEFT JOIN workflow_instance i ON i.id = p.instance_id "
        "WHERE p.backfill_id = $1 AND p.state = 'submitted'",
        r["id"],
    )
    finished = sum(counts.get(s, 0) for s in TERMINAL_INSTANCE)
    remaining = (
        counts.get("pending", 0)
        + counts.get("retry", 0)
        + sum(counts.get(s, 0) for s in ("starting", *ACTIVE_INSTANCE))
    )
    throughput = None
    eta = None
    if timing["first"] is not None and timing["done"]:
        elapsed = max(1.0, (datetime.now(UTC) - timing["first"]).total_seconds())
        throughput = timing["done"] / elapsed
        eta = remaining / throughput if r["status"] == "running" else None
    return {
        "backfill_id": r["id"],
        "workflow_id": r["workflow_id"],
        "version": r["version"],
        "from": iso(r["range_from"]),
        "to": iso(r["range_to"]),
        "step_seconds": r["step_seconds"],
        "params": r["params"],
        "concurrency": r["concurrency"],
        "priority": r["priority"],
        "status": r["status"],
        "created_by": r["created_by"],
        "created_at": iso(r["created_at"]),
        "finished_at": iso(r["finished_at"]),
        "cancelled_by": r["cancelled_by"],
        "cancel_reason": r["cancel_reason"],
        "total": r["total"],
        "counts": counts,
        "finished": finished,
        "remaining": remaining,
        "runs_per_second": throughput,
        "eta_seconds": eta,
    }


def _action(
    topology: Topology, workflow_id: str, action: ActionKind, instance_id: str, reason: str, actor: str | None
) -> OutgoingMessage:
    return action_message(
        topology,
        workflow_id,
        action,
        action_id=new_request_id(),
        instance_id=instance_id,
        reason=reason,
        actor=actor or "backfill",
    )


class BackfillLoop(Component):
    """Submits each running backfill's pending (and retried) periods within its concurrency limit.

    A round runs every ``tick`` and, sooner, when a run of a workflow with a running backfill ends: the
    loop follows those workflows' run lifecycle events (``legato.notify.run.<wf>.<status>``, core
    subscriptions, only while a backfill of the workflow runs), so a slot freed by a run's end is filled
    at once instead of at the next tick. The events are a wake-up only: a lost one costs a tick, never a
    period (each round recounts from Postgres). Rounds are at least ``min_gap`` apart.
    """

    name = "backfill"

    def __init__(
        self,
        pool: asyncpg.Pool,
        topology: Topology,
        *,
        wake_relay: Callable[[], None],
        tick: float = 0.5,
        nc: Client | None = None,
        min_gap: float = 0.02,
    ) -> None:
        super().__init__()
        self.pool = pool
        self.topology = topology
        self.wake_relay = wake_relay
        self.tick = tick
        self.nc = nc
        self.min_gap = min_gap
        self.submitted = 0
        self.rounds = 0
        self._wake = asyncio.Event()
        self._following: dict[str, Subscription] = {}
        self._ended = tuple(f".{status.value}" for status in TERMINAL_INSTANCE)

    def _on_shutdown(self) -> None:
        self._wake.set()

    def wake(self) -> None:
        """Run the next round now (a backfill was started, resumed or given periods to retry)."""
        self._wake.set()

    async def _run(self) -> None:
        try:
            while not self.stopping:
                started = time.monotonic()
                self._wake.clear()  # a run ending during this round brings the next one forward
                try:
                    if await self.submit_due():
                        self.wake_relay()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("backfill_round_failed", error=repr(exc))
                self.rounds += 1
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self.tick)
                except TimeoutError:
                    pass
                await self.sleep_or_stop(self.min_gap - (time.monotonic() - started))
        finally:
            await self._follow(set())

    async def _on_run_event(self, msg: Msg) -> None:
        if msg.subject.endswith(self._ended):
            self._wake.set()

    async def _follow(self, workflows: set[str]) -> None:
        """Follow the run-end events of exactly these workflows (no-op without a NATS connection)."""
        if self.nc is None:
            return
        for wf in [w for w in self._following if w not in workflows]:
            try:
                await self._following.pop(wf).unsubscribe()
            except Exception as exc:  # a closed connection: nothing left to unsubscribe
                log.debug("backfill_unfollow_failed", workflow_id=wf, error=repr(exc))
        for wf in workflows - self._following.keys():
            try:
                self._following[wf] = await self.nc.subscribe(
                    self.topology.notify_filter("run", wf), cb=self._on_run_event
                )
            except Exception as exc:  # the tick still drives the backfill
                log.warning("backfill_follow_failed", workflow_id=wf, error=repr(exc))

    async def submit_due(self) -> int:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, workflow_id FROM backfill WHERE status = 'running' LIMIT 1000"
            )
        await self._follow({r["workflow_id"] for r in rows})
        total = 0
        for r in rows:
            total += await self._submit(r["id"])
        self.submitted += total
        return total

    async def _submit(self, backfill_id: str) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT id, workflow_id, concurrency, priority FROM backfill WHERE id = $1 AND status = 'running' "
                "FOR UPDATE SKIP LOCKED",
                backfill_id,
            )
            if row is None:
                return 0  # paused, cancelled, done, or another replica has it now
            wf = row["workflow_id"]
            active = await conn.fetchval(
                "SELECT count(*) FROM backfill_period p LEFT JOIN workflow_instance i ON i.id = p.instance_id "
                "WHERE p.backfill_id = $1 AND p.state = 'submitted' AND (i.status IS NULL OR i.status IN "
                "('queued', 'running'))",
                backfill_id,
            )
            free = row["concurrency"] - active
            if free <= 0:
                return 0
            picked = await conn.fetch(
                "SELECT period_start, period_end, trigger_key, instance_id, params, state FROM backfill_period "
                "WHERE backfill_id = $1 AND state IN ('pending', 'retry') ORDER BY period_start LIMIT $2",
                backfill_id,
                free,
            )
            if not picked:
                if active == 0:
                    await conn.execute(
                        "UPDATE backfill SET status = 'done', finished_at = now(), updated_at = now() WHERE id = $1",
                        backfill_id,
                    )
                    log.info("backfill_done", backfill_id=backfill_id, workflow_id=wf)
                return 0
            msgs: list[OutgoingMessage] = []
            for p in picked:
                if p["state"] == "retry":
                    why = f"backfill {backfill_id}: retry failed period {p['period_start'].isoformat()}"
                    msgs.append(_action(self.topology, wf, "restart", p["instance_id"], why, None))
                    continue
                details: dict[str, Any] = {
                    "backfill_id": backfill_id,
                    "period_start": p["period_start"].isoformat(),
                    "period_end": p["period_end"].isoformat(),
                    "priority": row["priority"],
                }
                start = StartRun(
                    workflow_id=wf,
                    trigger_key=p["trigger_key"],
                    instance_id=p["instance_id"],
                    trigger=TriggerInfo(kind="backfill", id=backfill_id, details=details),
                    params=p["params"],
                    requested_at=time.time(),
                )
                msgs.append(
                    OutgoingMessage(
                        self.topology.trigger_subject(wf), encode(start), msg_id=f"start:{p['instance_id']}"
                    )
                )
            await add_to_outbox(conn, msgs)
            await conn.execute(
                "UPDATE backfill_period SET state = 'submitted', submitted_at = coalesce(submitted_at, now()) "
                "WHERE backfill_id = $1 AND period_start = ANY($2::timestamptz[])",
                backfill_id,
                [p["period_start"] for p in picked],
            )
            return len(msgs)
