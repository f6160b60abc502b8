"""Cron time triggers with time zones, exactly once per fire time, with a catch-up policy.

Every active workflow's cron triggers are evaluated each tick. A fire is the key
``(workflow, trigger, fire_time)``: in one transaction the fire row is inserted (``ON CONFLICT DO
NOTHING``), the trigger's cursor advances, and the StartRun goes to the outbox with trigger key
``cron:<trigger>:<fire time>`` — so two trigger replicas, a restart, or a replayed tick never start
a run twice. A trigger seen for the first time starts from now (no history: use a backfill for that).

Fires that fell due while the trigger service was down, or while the workflow was paused, follow the
trigger's ``catch_up`` policy: ``all`` runs each (oldest first, at most ``max_catch_up``, the newest),
``latest`` runs only the newest, ``none`` runs only a fire that is on time (at most
:data:`ON_TIME_GRACE` late). Every fire that does not run is recorded as a ``skipped`` run with the
reason (the same run id and trigger key it would have had), so it is visible and can never run later.
While a workflow is paused, ``none`` records its fires as skipped as they fall due; ``latest`` and
``all`` hold them and apply the policy on resume. ``start``/``end`` bound the fire times; ``jitter``
delays each fire by a fixed offset derived from its key (replicas agree), the key stays the scheduled
time.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from legato.bus.publisher import OutgoingMessage
from legato.bus.topology import Topology
from legato.core import CompiledWorkflow, CronSchedule, compile_workflow, definition_from_json, to_json_value
from legato.core.model import CronTrigger
from legato.core.reasons import Missed, Paused, code_of, encode_reason, message_of
from legato.lifecycle.component import Component
from legato.protocol import encode
from legato.protocol.events import RunEvent, encode_event, run_event_id
from legato.protocol.ids import instance_id_for
from legato.protocol.messages import StartRun, TriggerInfo
from legato.store.outbox import add_events, add_to_outbox
from legato.telemetry import bind_context, get_logger

log = get_logger("legato.trigger")

ON_TIME_GRACE = timedelta(seconds=60)
"""``catch_up: none``: a fire later than this past its (jittered) time is recorded as skipped."""
CHUNK = 1000
BATCH = 2500  # triggers per transaction
PREPARE_AHEAD = (1.5, 5.0)
"""A round this many seconds (min, max) before the next fire time builds that fire's StartRuns."""
FAR_FUTURE = datetime.max.replace(tzinfo=UTC) - timedelta(days=1)
"""Fires examined per trigger per round beyond ``max_catch_up`` (a long outage takes a few rounds)."""


def cron_clock(clock_file: str = "") -> Callable[[], datetime]:
    """The wall clock, or (tests: ``Settings.test_cron_clock_file``) the time written in a file,
    re-read at each call."""
    if not clock_file:
        return lambda: datetime.now(UTC)
    path = Path(clock_file)

    def read() -> datetime:
        value = datetime.fromisoformat(path.read_text().strip())
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    return read


def jitter_offset(workflow_id: str, trigger_id: str, fire_time: datetime, jitter: float) -> timedelta:
    """A fixed delay in ``[0, jitter)`` for one fire, the same in every replica."""
    if jitter <= 0:
        return timedelta(0)
    key = f"{workflow_id}\x00{trigger_id}\x00{fire_time.astimezone(UTC).isoformat()}".encode()
    fraction = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2.0**64
    return timedelta(seconds=round(fraction * jitter, 3))


def fire_key(trigger_id: str, fire_time: datetime) -> str:
    """The trigger key of one cron fire: ``cron:<trigger>:<fire time in UTC>``."""
    return f"cron:{trigger_id}:{fire_time.astimezone(UTC).isoformat()}"


@dataclass(frozen=True)
class _Workflow:
    compiled: CompiledWorkflow
    version: int
    paused: bool
    paused_by: str | None
    paused_reason: str | None


@dataclass(frozen=True)
class Decision:
    """What one round does with the due fires of one trigger."""

    run: list[datetime]
    skip: list[tuple[datetime, Missed | Paused]]
    cursor: datetime | None  # new cursor, None to hold


def decide(
    trigger: CronTrigger,
    due: list[datetime],
    full: bool,
    now: datetime,
    due_at: Callable[[datetime], datetime],
    paused: Paused | None,
) -> Decision:
    """Apply the catch-up policy to ``due`` (ascending, all due by now). ``full``: more fires follow
    ``due`` beyond the ``CHUNK`` examined; ``paused``: the pause reason when the workflow is paused."""
    if not due:
        return Decision([], [], None)
    policy = trigger.catch_up
    if paused is not None:
        if policy != "none":
            return Decision([], [], None)  # held: the policy applies on resume
        return Decision([], [(t, paused) for t in due], due[-1])
    keep = trigger.max_catch_up if policy == "all" else 1
    if full:
        older = due[: len(due) - keep]
        return Decision([], [(t, _skip_reason(policy, t, None, now, trigger)) for t in older], older[-1])
    skip: list[tuple[datetime, Missed | Paused]]
    if policy == "all":
        run = due[-keep:]
        skip = [(t, _skip_reason(policy, t, run[0], now, trigger)) for t in due[:-keep]]
    elif policy == "latest":
        run = due[-1:]
        skip = [(t, _skip_reason(policy, t, run[0], now, trigger)) for t in due[:-1]]
    else:
        run = [t for t in due if now - due_at(t) <= ON_TIME_GRACE]
        skip = [(t, _skip_reason(policy, t, None, now, trigger)) for t in due if t not in run]
    return Decision(run, skip, due[-1])


def _skip_reason(
    policy: str, fire: datetime, newer: datetime | None, now: datetime, trigger: CronTrigger
) -> Missed:
    late = int((now - fire).total_seconds())
    if policy == "all":
        message = f"missed fire beyond max_catch_up {trigger.max_catch_up} (catch_up: all runs the newest)"
    elif policy == "latest":
        message = "missed fire superseded by a newer one (catch_up: latest)" + (
            f": {newer.isoformat()} ran instead" if newer else ""
        )
    else:
        message = f"missed fire, {late}s late (catch_up: none)"
    return Missed(policy=policy, late_seconds=late, message=message)


class CronLoop(Component):
    """Evaluates every active cron trigger each tick and fires what is due, exactly once per fire time."""

    name = "cron"

    def __init__(
        self,
        pool: asyncpg.Pool,
        topology: Topology,
        *,
        wake_relay: Callable[[], None],
        tick: float = 1.0,
        parallel: int = 4,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__()
        self.pool = pool
        self.topology = topology
        self.wake_relay = wake_relay
        self.tick = tick
        self.parallel = parallel  # triggers fired at once, each in its own transaction (pool connections)
        self.clock = clock
        self._compiled: dict[tuple[str, int], CompiledWorkflow | None] = {}
        # Parsed schedules and their fire times, shared by every trigger with the same expression and
        # zone: 10,000 per-minute triggers compute each minute's fire once (pure functions, so exact).
        self._schedules: dict[tuple[str, str], CronSchedule] = {}
        self._next_fire: dict[tuple[str, str, datetime], datetime] = {}
        # The active cron workflows as last read (refreshed at most every `tick`, never in a fire's path;
        # each batch transaction re-reads the rows it fires for, so a stale entry never fires).
        self._workflows: list[_Workflow] = []
        self._workflows_read = float("-inf")
        # StartRuns of the next fire time built while waiting for it: (workflow, version, trigger, fire).
        self._ready: dict[
            tuple[str, int, str, datetime], list[tuple[tuple[str, str, datetime], str, OutgoingMessage]]
        ]
        self._ready = {}
        self._ready_for: datetime | None = None
        # (workflow, version, trigger) -> nothing can be due before this instant: a round skips the
        # trigger without a transaction. A lower bound only (another replica may be further on).
        self._not_before: dict[tuple[str, int, str], datetime] = {}
        self.fired = 0
        self.skipped = 0

    async def _run(self) -> None:
        while not self.stopping:
            started = time.monotonic()
            try:
                await self.fire_due()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cron_round_failed", error=repr(exc))
            self._prepare_ahead()
            await self.sleep_or_stop(self._sleep_time(started))

    def _prepare_ahead(self) -> None:
        """A few seconds before the next fire time, build the StartRuns of the triggers due then (a
        message depends only on the workflow version, trigger and fire time; ``requested_at`` is the
        fire time's wall-clock instant), so the burst at that time only decides, inserts and commits.
        Stops short of the fire time; what is not built then is built in the burst as before."""
        now = self.clock()
        nxt = self._next_due(now)
        if nxt is None or nxt == self._ready_for:
            return
        ahead = (nxt - now).total_seconds()
        if not PREPARE_AHEAD[0] <= ahead <= PREPARE_AHEAD[1]:
            return
        self._ready_for = nxt
        self._ready = {}
        wall = time.time() + ahead
        stop_at = time.monotonic() + ahead - 0.5
        for wf in self._workflows:
            wf_id = wf.compiled.definition.id
            for trigger in wf.compiled.definition.triggers:
                if not isinstance(trigger, CronTrigger) or trigger.jitter > 0:
                    continue
                if self._not_before.get((wf_id, wf.version, trigger.id)) != nxt:
                    continue
                try:
                    built = self._prepare_starts(wf, trigger, [nxt], requested_at=wall)
                except Exception:  # the fire itself reports a trigger whose params fail
                    continue
                self._ready[(wf_id, wf.version, trigger.id, nxt)] = built
            if time.monotonic() > stop_at:
                return

    def _next_due(self, now: datetime) -> datetime | None:
        """The earliest instant after ``now`` at which a known trigger falls due (None: none known)."""
        upcoming = [t for t in self._not_before.values() if t > now]
        return min(upcoming) if upcoming else None

    def _sleep_time(self, round_started: float) -> float:
        """Sleep until the next fire falls due by the loop's clock, so a fire is not late by up to a
        tick; at most until ``tick`` after this round began (new workflows, pauses, a held catch-up)."""
        rest = self.tick - (time.monotonic() - round_started)
        now = self.clock()
        nxt = self._next_due(now)
        if nxt is not None:
            rest = min(rest, (nxt - now).total_seconds())
        return max(0.001, rest)

    async def _active_cron_workflows(self, conn: asyncpg.Connection) -> list[_Workflow]:
        """Active workflows whose active version has cron triggers; whether a version has any is looked
        up (and the version compiled) once, so a round reads only the small workflow rows."""
        rows = await conn.fetch(
            "SELECT id, active_version, paused, paused_by, paused_reason FROM workflow WHERE active"
        )
        unknown = [
            (r["id"], r["active_version"])
            for r in rows
            if (r["id"], r["active_version"]) not in self._compiled
        ]
        for i in range(0, len(unknown), 500):
            part = unknown[i : i + 500]
            for d in await conn.fetch(
                "SELECT workflow_id, version, definition::text AS text FROM workflow_version "
                "WHERE (workflow_id, version) IN (SELECT * FROM unnest($1::text[], $2::int[])) "
                "AND jsonb_path_exists(definition, '$.triggers[*] ? (@.type == \"cron\")')",
                [k[0] for k in part],
                [k[1] for k in part],
            ):
                key = (d["workflow_id"], d["version"])
                try:
                    self._compiled[key] = compile_workflow(definition_from_json(str(d["text"]).encode()))
                except Exception as exc:  # stored definitions were valid when pushed; never stop the loop
                    log.warning(
                        "cron_definition_unreadable", workflow_id=key[0], version=key[1], error=repr(exc)
                    )
            for key in part:
                self._compiled.setdefault(key, None)  # no cron trigger in this version
        if len(self._compiled) > 200_000:
            self._compiled.clear()
        out: list[_Workflow] = []
        for r in rows:
            compiled = self._compiled.get((r["id"], r["active_version"]))
            if compiled is not None:
                out.append(
                    _Workflow(compiled, r["active_version"], r["paused"], r["paused_by"], r["paused_reason"])
                )
        return out

    def _schedule(self, trigger: CronTrigger) -> CronSchedule:
        key = (trigger.cron, trigger.timezone)
        sched = self._schedules.get(key)
        if sched is None:
            if len(self._schedules) > 100_000:
                self._schedules.clear()
            sched = CronSchedule.parse(trigger.cron, trigger.timezone)
            self._schedules[key] = sched
        return sched

    def _next_after(self, trigger: CronTrigger, after: datetime) -> datetime:
        """``CronSchedule.next_after``, memoized per (expression, zone, instant)."""
        key = (trigger.cron, trigger.timezone, after)
        fire = self._next_fire.get(key)
        if fire is None:
            if len(self._next_fire) > 200_000:
                self._next_fire.clear()
            fire = self._schedule(trigger).next_after(after)
            self._next_fire[key] = fire
        return fire

    def _fires_between(
        self, trigger: CronTrigger, start: datetime, end: datetime, limit: int
    ) -> list[datetime]:
        """``CronSchedule.fires_between`` from the memoized fire times."""
        out: list[datetime] = []
        current = start
        while len(out) < limit:
            fire = self._next_after(trigger, current)
            if fire > end:
                break
            out.append(fire)
            current = fire
        return out

    async def fire_due(self) -> int:
        """Fire every due cron trigger once; returns how many runs were started.

        What is due is fired first, from the workflow list as last read; the list (new workflows,
        versions, pauses) is re-read afterwards when older than ``tick`` — but not just before a fire
        falls due, so reading 10,000 rows never delays a fire. Each batch transaction re-reads its
        workflows' rows, so a workflow deactivated, re-versioned or paused meanwhile is never fired on
        stale information."""
        now = self.clock()
        started = 0
        if self._workflows:
            started += await self._fire_all(self._due(now), now)
        age = time.monotonic() - self._workflows_read
        if age >= self.tick:
            nxt = self._next_due(now)
            soon = nxt is not None and (nxt - now).total_seconds() < min(0.5, self.tick / 2)
            if not soon or age >= 5 * self.tick:
                async with self.pool.acquire() as conn:
                    self._workflows = await self._active_cron_workflows(conn)
                self._workflows_read = time.monotonic()
                started += await self._fire_all(self._due(now), now)  # first sight, new versions
        if started:
            self.wake_relay()
        self.fired += started
        return started

    def _due(self, now: datetime) -> list[tuple[_Workflow, CronTrigger]]:
        if len(self._not_before) > 1_000_000:
            self._not_before.clear()
        return [
            (wf, trigger)
            for wf in self._workflows
            for trigger in wf.compiled.definition.triggers
            if isinstance(trigger, CronTrigger)
            and now >= self._not_before.get((wf.compiled.definition.id, wf.version, trigger.id), now)
        ]

    async def _fire_all(self, due: list[tuple[_Workflow, CronTrigger]], now: datetime) -> int:
        """Fire ``due`` in batches of ``BATCH`` triggers, ``parallel`` transactions at once."""
        if not due:
            return 0
        slots = asyncio.Semaphore(self.parallel)

        async def one(batch: list[tuple[_Workflow, CronTrigger]]) -> int:
            async with slots:
                try:
                    return await self._fire_batch(batch, now)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # retried next round; other batches go on
                    log.warning("cron_batch_failed", triggers=len(batch), error=repr(exc))
                    return 0

        started = 0
        for i in range(0, len(due), BATCH * self.parallel):  # bounded: at most `parallel` batches at once
            chunk = due[i : i + BATCH * self.parallel]
            started += sum(
                await asyncio.gather(*(one(chunk[j : j + BATCH]) for j in range(0, len(chunk), BATCH)))
            )
        if started:
            log.info("cron_fired", runs=started, triggers=len(due))
        return started

    async def _fire_batch(self, batch: list[tuple[_Workflow, CronTrigger]], now: datetime) -> int:
        """Up to ``BATCH`` triggers in one transaction: cursors locked (``SKIP LOCKED``: a trigger another
        replica holds is left to it), fires inserted (the primary key gates each StartRun), cursors moved.
        The not-before cache is updated only after the commit."""
        keys = [(wf.compiled.definition.id, trigger.id) for wf, trigger in batch]
        later: dict[tuple[str, int, str], datetime] = {}
        async with self.pool.acquire() as conn, conn.transaction():
            # The cursors, locked, with their workflows' rows as of now (a stale list never fires).
            rows = await conn.fetch(
                "SELECT c.workflow_id, c.trigger_id, c.last_fire, w.active, w.active_version, w.paused, "
                "w.paused_by, w.paused_reason FROM unnest($1::text[], $2::text[]) AS u (w, t) "
                "JOIN cron_cursor c ON c.workflow_id = u.w AND c.trigger_id = u.t "
                "JOIN workflow w ON w.id = c.workflow_id FOR UPDATE OF c SKIP LOCKED",
                [k[0] for k in keys],
                [k[1] for k in keys],
            )
            locked = {(r["workflow_id"], r["trigger_id"]): r["last_fire"] for r in rows}
            current = {r["workflow_id"]: r for r in rows}
            missing = [k for k in keys if k not in locked]
            if missing:
                # present but unlocked: another replica is firing it right now; absent: first sight
                present = {
                    (r["workflow_id"], r["trigger_id"])
                    for r in await conn.fetch(
                        "SELECT workflow_id, trigger_id FROM cron_cursor WHERE (workflow_id, trigger_id) IN "
                        "(SELECT * FROM unnest($1::text[], $2::text[]))",
                        [k[0] for k in missing],
                        [k[1] for k in missing],
                    )
                }
                new = [k for k in missing if k not in present]
                await conn.execute(
                    "INSERT INTO cron_cursor (workflow_id, trigger_id, last_fire) "
                    "SELECT w, t, $3 FROM unnest($1::text[], $2::text[]) AS u (w, t) ON CONFLICT DO NOTHING",
                    [k[0] for k in new],
                    [k[1] for k in new],
                    now,
                )
                first = set(new)
                for wf, trigger in batch:
                    if (wf.compiled.definition.id, trigger.id) in first:
                        self._plan_wait(
                            later,
                            wf,
                            trigger,
                            self._next_after(trigger, now),
                        )
            starts: list[tuple[tuple[str, str, datetime], str, OutgoingMessage]] = []
            moves: list[tuple[str, str, datetime]] = []
            for listed, trigger in batch:
                key = (listed.compiled.definition.id, trigger.id)
                if key not in locked:
                    continue
                row = current.get(key[0])
                if row is None or not row["active"] or row["active_version"] != listed.version:
                    continue  # changed since the list was read: the next read decides
                wf = listed
                if (row["paused"], row["paused_by"], row["paused_reason"]) != (
                    listed.paused,
                    listed.paused_by,
                    listed.paused_reason,
                ):
                    wf = _Workflow(
                        listed.compiled, listed.version, row["paused"], row["paused_by"], row["paused_reason"]
                    )
                with bind_context(workflow_id=key[0]):
                    try:
                        decision = self._decide(wf, trigger, locked[key], now, later)
                        if decision.cursor is None:
                            continue
                        ready = (
                            self._ready.pop((key[0], wf.version, trigger.id, decision.run[0]), None)
                            if len(decision.run) == 1
                            else None
                        )
                        prepared = ready or self._prepare_starts(wf, trigger, decision.run)
                    except Exception as exc:  # a broken trigger (params that fail) never stops the others
                        log.warning("cron_trigger_failed", trigger=trigger.id, error=repr(exc))
                        later.pop((key[0], wf.version, trigger.id), None)
                        continue
                    await self._record_skipped(conn, wf, trigger, decision.skip)
                    starts.extend(prepared)
                    moves.append((key[0], key[1], decision.cursor))
            inserted: set[tuple[str, str, datetime]] = set()
            if starts:
                inserted = {
                    (r["workflow_id"], r["trigger_id"], r["fire_time"])
                    for r in await conn.fetch(
                        "INSERT INTO cron_fire (workflow_id, trigger_id, fire_time, instance_id, status, fired_at) "
                        "SELECT w, t, f, i, 'fired', clock_timestamp() FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[]) "
                        "AS u (w, t, f, i) ON CONFLICT DO NOTHING RETURNING workflow_id, trigger_id, fire_time",
                        [k[0] for k, _, _ in starts],
                        [k[1] for k, _, _ in starts],
                        [k[2] for k, _, _ in starts],
                        [iid for _, iid, _ in starts],
                    )
                }
            msgs = [m for k, _, m in starts if k in inserted]
            await add_to_outbox(conn, msgs)
            if moves:
                await conn.execute(
                    "UPDATE cron_cursor c SET last_fire = u.f, updated_at = now() "
                    "FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS u (w, t, f) "
                    "WHERE c.workflow_id = u.w AND c.trigger_id = u.t",
                    [m[0] for m in moves],
                    [m[1] for m in moves],
                    [m[2] for m in moves],
                )
        self._not_before.update(later)
        return len(msgs)

    def _plan_wait(
        self, later: dict[tuple[str, int, str], datetime], wf: _Workflow, trigger: CronTrigger, fire: datetime
    ) -> None:
        """Nothing of this trigger is due before ``fire`` (jittered; never, past its ``end``)."""
        wf_id = wf.compiled.definition.id
        beyond_end = trigger.end is not None and fire > trigger.end
        later[(wf_id, wf.version, trigger.id)] = (
            FAR_FUTURE if beyond_end else fire + jitter_offset(wf_id, trigger.id, fire, trigger.jitter)
        )

    def _decide(
        self,
        wf: _Workflow,
        trigger: CronTrigger,
        cursor: datetime,
        now: datetime,
        later: dict[tuple[str, int, str], datetime],
    ) -> Decision:
        """What to do with this trigger's fires between its cursor and now (no database access)."""
        wf_id = wf.compiled.definition.id

        def due_at(t: datetime) -> datetime:
            return t + jitter_offset(wf_id, trigger.id, t, trigger.jitter)

        lower = cursor
        if trigger.start is not None and trigger.start - timedelta(microseconds=1) > lower:
            lower = trigger.start - timedelta(microseconds=1)
        upper = now if trigger.end is None else min(now, trigger.end)
        if upper <= lower:
            self._plan_wait(later, wf, trigger, self._next_after(trigger, lower))
            return Decision([], [], None)
        keep = trigger.max_catch_up if trigger.catch_up == "all" else 1
        found = self._fires_between(trigger, lower, upper.astimezone(UTC), CHUNK + keep)
        due = found
        for i, t in enumerate(found):
            if due_at(t) > now:  # jittered past now: it and the later ones wait
                due = found[:i]
                break
        full = len(due) == CHUNK + keep
        paused = None
        if wf.paused:
            by = f" by {wf.paused_by}" if wf.paused_by else ""
            why = f": {wf.paused_reason}" if wf.paused_reason else ""
            paused = Paused(by=wf.paused_by, message=f"workflow paused{by}{why}")
        decision = decide(trigger, due, full, now, due_at, paused)
        if not full and not (due and decision.cursor is None):  # not held by a pause, no chunk left
            nxt = (
                found[len(due)]
                if len(found) > len(due)
                else self._next_after(trigger, due[-1] if due else lower)
            )
            self._plan_wait(later, wf, trigger, nxt)
        return decision

    def _prepare_starts(
        self, wf: _Workflow, trigger: CronTrigger, fires: list[datetime], requested_at: float | None = None
    ) -> list[tuple[tuple[str, str, datetime], str, OutgoingMessage]]:
        """A StartRun per fire (not yet sent: only those whose fire row is new go to the outbox)."""
        wf_id = wf.compiled.definition.id
        out: list[tuple[tuple[str, str, datetime], str, OutgoingMessage]] = []
        for fire_time in fires:
            key = fire_key(trigger.id, fire_time)
            instance_id = instance_id_for(wf_id, key)
            params = {
                k: to_json_value(v)
                for k, v in wf.compiled.trigger_params(trigger.id, fire_time=fire_time).items()
            }
            start = StartRun(
                workflow_id=wf_id,
                trigger_key=key,
                instance_id=instance_id,
                trigger=TriggerInfo(kind="cron", id=trigger.id, details={"fire_time": fire_time.isoformat()}),
                params=params,
                requested_at=time.time() if requested_at is None else requested_at,
            )
            message = OutgoingMessage(
                self.topology.trigger_subject(wf_id), encode(start), msg_id=f"start:{instance_id}"
            )
            out.append(((wf_id, trigger.id, fire_time), instance_id, message))
        return out

    async def _record_skipped(
        self,
        conn: asyncpg.Connection,
        wf: _Workflow,
        trigger: CronTrigger,
        skip: list[tuple[datetime, Missed | Paused]],
    ) -> None:
        """Each fire that does not run becomes a terminal ``skipped`` run under the id and trigger key it
        would have had, so ``legato instances`` shows it with the reason and it can never start later."""
        if not skip:
            return
        wf_id = wf.compiled.definition.id
        rows = []
        for fire_time, reason in skip:
            key = fire_key(trigger.id, fire_time)
            iid = instance_id_for(wf_id, key)
            info = {"kind": "cron", "id": trigger.id, "details": {"fire_time": fire_time.isoformat()}}
            rows.append((iid, wf_id, wf.version, key, info, encode_reason(reason), message_of(reason)))
        # Each skipped run is born ended: its one lifecycle event (docs/events.md) goes into the outbox
        # with its row, only if the row is new.
        events: list[OutgoingMessage] = []
        for (_fire_time, reason), row in zip(skip, rows, strict=True):
            ended = await conn.fetchval(
                "INSERT INTO workflow_instance (id, workflow_id, version, trigger_key, trigger, status, "
                "reason, error, root_instance_id, requested_at, ended_at, notify_seq) "
                "VALUES ($1, $2, $3, $4, $5, 'skipped', $6, $7, $1, now(), now(), 1) ON CONFLICT DO NOTHING "
                "RETURNING extract(epoch FROM ended_at)::float8",
                *row,
            )
            if ended is not None:
                event = RunEvent(
                    event_id=run_event_id(row[0], 1),
                    workflow_id=wf_id,
                    instance_id=row[0],
                    status="skipped",
                    at=ended,
                    seq=1,
                    reason=code_of(reason),
                )
                events.append(
                    OutgoingMessage(
                        self.topology.notify_run_subject(wf_id, "skipped"),
                        encode_event(event),
                        msg_id=event.event_id,
                    )
                )
        await add_events(conn, events)
        await conn.executemany(
            "INSERT INTO cron_fire (workflow_id, trigger_id, fire_time, instance_id, status) "
            "VALUES ($1, $2, $3, $4, 'skipped') ON CONFLICT DO NOTHING",
            [(wf_id, trigger.id, r[0], row[0]) for r, row in zip(skip, rows, strict=True)],
        )
        self.skipped += len(skip)
        log.warning("cron_fires_skipped", trigger=trigger.id, count=len(skip), reason=code_of(skip[-1][1]))
