"""Applying signals in batches: store each once, feed triggers and joins, fire complete tuples once,
satisfy step waits — all in one Postgres transaction per batch, acked after it commits.

The consumer loop hands each delivery to :meth:`SignalIngest.submit` and waits; a group commit
(``legato.store.batcher``) drains what is queued (up to ``batch``), applies it in one transaction and
resolves the waiting handlers, which then ack. A batch that fails is applied again one message at a
time, so one bad message only fails itself.

Exactly once, with several routers and redeliveries:
- ``signal`` is keyed ``(name, id)``: a redelivered signal finds its row and has no second effect;
- a joined tuple is one ``signal_join`` row upserted with ``ON CONFLICT DO UPDATE`` — its row lock
  serialises two routers that each bring one leg, so the second one sees both legs;
- ``signal_trigger_fire`` is keyed ``(workflow, trigger, tuple)`` and the StartRun goes to the outbox in
  the same transaction, with the tuple as the run's trigger key (the scheduler dedups too).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, assert_never

import asyncpg
import msgspec
from opentelemetry import trace
from opentelemetry.trace import Link

from legato.bus.consumer import Delivery, Poison
from legato.bus.publisher import MSG_ID_HEADER, OutgoingMessage
from legato.bus.topology import Topology
from legato.core import ParamError, compile_workflow, definition_from_json
from legato.core.compiled import CompiledWorkflow
from legato.core.signals import schema_error
from legato.lifecycle.component import Component
from legato.protocol import encode
from legato.protocol.ids import instance_id_for
from legato.protocol.messages import (
    SignalWaitMessage,
    SignalWaitRegistered,
    SignalWaitSatisfied,
    SignalWaitsCancelled,
    StartRun,
    TriggerInfo,
)
from legato.security.signing import PUBLISHER_CLAIMS, SignalOrigins
from legato.sel import SelError
from legato.signal_router.matching import (
    Member,
    RegisteredTrigger,
    Signal,
    TriggerTable,
    containment_filter,
    fire_params,
    missing_legs,
    route,
    wait_matches,
)
from legato.store.batcher import GroupCommit, content_error
from legato.store.outbox import OutboxRow, add_to_outbox, outbox_args, outbox_ctes
from legato.store.signal_triggers import SIGNAL_TRIGGER_LOCK_KEY, signal_name_lock_key
from legato.store.transactions import run_transaction
from legato.telemetry import get_logger, get_tracer, inject_headers, metrics, parse_traceparent
from legato.telemetry.ids import remote_parent, remote_parent_of
from legato.telemetry.tracing import traceparent_of

log = get_logger("legato.signal_router")

_decode_json = msgspec.json.Decoder().decode
_decode_wait = msgspec.json.Decoder(SignalWaitMessage).decode
MAX_REJECTED_BODY = 4000
MAX_REJECTED_ERROR = 1000
MAX_SIGNAL_DEPTH = 64  # nesting of a signal body; deeper is rejected (Postgres and our walkers recurse)
WAIT_SCAN_LIMIT = 100_000


class RawPayload:
    """The consumer's decoder for LEGATO_SIGNALS: every body is accepted as bytes, so a malformed signal
    is stored as rejected (visible) instead of being dead-lettered."""

    def decode(self, buf: bytes, /) -> bytes:
        return bytes(buf)


@dataclass
class IncomingSignal:
    """A delivery parsed for storage; ``error`` says why it is rejected (stored, never matched)."""

    name: str
    id: str
    body: Any
    raw: bytes
    headers: Mapping[str, str]
    stream_seq: int
    published_at: datetime
    traceparent: str | None
    error: str | None = None
    # Who published it, as proven (``SignalOrigins``): a subset of the Legato-Publisher* headers.
    publisher: Mapping[str, str] = field(default_factory=dict)

    @property
    def rejected(self) -> bool:
        return self.error is not None

    def signal(self) -> Signal:
        return Signal(self.name, self.id, self.body, self.published_at, self.traceparent)


@dataclass(frozen=True)
class _Queued:
    delivery: Delivery[bytes]
    traceparent: str | None


@dataclass
class _Candidate:
    """A complete tuple to fire (once)."""

    trigger: RegisteredTrigger
    tuple_key: str
    join_values: dict[str, Any]
    members: dict[str, Any]  # leg -> {"id", "name", "at", "fields", "tp"}


def anonymous_signal_id(stream_seq: int, published_at: datetime) -> str:
    """The id of a signal published without a message id: its stream sequence and the time JetStream
    stored it (microseconds). A redelivery keeps both; a recreated stream restarts its sequence at 1, but
    at a later time, so its new signals never collide with the old ones as duplicates."""
    micros = (published_at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    return f"{stream_seq}@{micros}"


def batch_lock_keys(signals: Sequence[IncomingSignal]) -> list[int]:
    """The advisory locks a batch holds shared: trigger registrations', then each signal name's (sorted)."""
    return [SIGNAL_TRIGGER_LOCK_KEY, *(signal_name_lock_key(n) for n in sorted({s.name for s in signals}))]


# What a batch reads under its locks, in one statement: the trigger epoch, the names' schemas and open waits.
_READ_BATCH = """
SELECT (SELECT epoch FROM signal_trigger_epoch) AS epoch,
       (SELECT coalesce(jsonb_object_agg(name, schema), '{}') FROM signal_schema
        WHERE name = ANY($1::text[])) AS schemas,
       (SELECT coalesce(jsonb_agg(jsonb_build_object('id', id, 'workflow_id', workflow_id,
            'instance_id', instance_id, 'step_id', step_id, 'name', name, 'match', match)), '[]')
        FROM signal_wait WHERE name = ANY($1::text[]) AND satisfied_at IS NULL
        AND NOT cancelled) AS waits
"""

_INSERT_SIGNALS = """
INSERT INTO signal (name, id, params, raw, publisher, publisher_workflow, publisher_instance,
                    publisher_step, published_at, stream_seq, rejected, error, traceparent)
SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::text[], $9::timestamptz[], $10::bigint[], $11::boolean[],
                     $12::text[], $13::text[])
ON CONFLICT (name, id) DO NOTHING
RETURNING name, id
"""

# A tuple's row: its signals so far (a copy of a tuple that fired, or a leg that came again, changes
# nothing; a tuple that expired starts over from this batch's signals). ``{0}``: its arguments from.
_UPSERT_JOIN = """
INSERT INTO signal_join AS j (workflow_id, trigger_id, tuple_key, join_values, members, first_at, expires_at)
SELECT w, t, k, jv, m, f, e FROM unnest(${0}::text[], ${1}::text[], ${2}::text[], ${3}::jsonb[], ${4}::jsonb[],
                                        ${5}::timestamptz[], ${6}::timestamptz[]) AS u (w, t, k, jv, m, f, e)
{where}
ON CONFLICT (workflow_id, trigger_id, tuple_key) DO UPDATE SET
    members = CASE WHEN j.fired_at IS NOT NULL THEN j.members
                   WHEN j.expires_at < EXCLUDED.first_at THEN EXCLUDED.members
                   ELSE EXCLUDED.members || j.members END,
    first_at = CASE WHEN j.fired_at IS NULL AND j.expires_at < EXCLUDED.first_at
                    THEN EXCLUDED.first_at ELSE j.first_at END,
    expires_at = CASE WHEN j.fired_at IS NULL AND j.expires_at < EXCLUDED.first_at
                      THEN EXCLUDED.expires_at ELSE j.expires_at END,
    updated_at = now()
RETURNING workflow_id, trigger_id, tuple_key, members, fired_at
"""
_UPSERT_JOINS = _UPSERT_JOIN.format(1, 2, 3, 4, 5, 6, 7, where="")

# The signals and their join rows in one statement. The join rows are written only if every signal of
# the batch was new ($21: how many there are): a copy of a stored signal must not count again, and a
# batch with one (a redelivery) writes its join rows in a second statement, from its new signals only.
# The join's upsert sees the signal rows' RETURNING, not the rows (one snapshot): it needs only the count.
_STORE_AND_JOIN = f"""
WITH stored AS ({_INSERT_SIGNALS}),
joined AS ({_UPSERT_JOIN.format(14, 15, 16, 17, 18, 19, 20, where="WHERE (SELECT count(*) FROM stored) = $21")})
SELECT name, id, NULL::text AS workflow_id, NULL::text AS trigger_id, NULL::text AS tuple_key,
       NULL::jsonb AS members, NULL::timestamptz AS fired_at FROM stored
UNION ALL
SELECT NULL, NULL, workflow_id, trigger_id, tuple_key, members, fired_at FROM joined
"""

# Fires tuples once (``signal_trigger_fire`` is keyed by the tuple) and writes, in the same statement,
# the outbox rows of the messages: a StartRun only if its tuple fired now ($15: the run's instance id,
# NULL for a message written in any case).
_FIRE = f"""
WITH fired AS (
    INSERT INTO signal_trigger_fire (workflow_id, trigger_id, tuple_key, instance_id, trigger_key,
                                     signals, params, error, traceparent)
    SELECT w, t, k, i, tk, s::jsonb, p, e, tp  -- signals as text: a list would be an array dimension
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::jsonb[], $8::text[], $9::text[]) AS u (w, t, k, i, tk, s, p, e, tp)
    ON CONFLICT DO NOTHING
    RETURNING workflow_id, trigger_id, tuple_key, instance_id, error
), closed AS (  -- complete tuples, fired now or before (a late copy): no longer pending
    -- One primary-key probe per tuple (LIMIT keeps the planner from hashing the whole
    -- table per batch; no fired_at test in the probe, or it walks the partial index of
    -- every pending tuple of the trigger); the rows are ours, locked by our upsert.
    UPDATE signal_join j SET fired_at = now(), updated_at = now()
    WHERE j.ctid = ANY(ARRAY(
        SELECT x.ctid FROM unnest($1::text[], $2::text[], $3::text[]) AS f (w, t, k)
        CROSS JOIN LATERAL (
            SELECT s.ctid FROM signal_join s
            WHERE s.workflow_id = f.w AND s.trigger_id = f.t AND s.tuple_key = f.k
            LIMIT 1
        ) AS x
    )) AND j.fired_at IS NULL
), {
    outbox_ctes(
        10,
        "WHERE u.n IN (SELECT m.n FROM unnest($15::text[]) WITH ORDINALITY AS m (i, n) "
        "WHERE m.i IS NULL OR m.i IN (SELECT instance_id FROM fired WHERE error IS NULL))",
    )
}
SELECT workflow_id, trigger_id, tuple_key, instance_id, error, NULL::bigint AS outbox_id, NULL::bigint AS n
FROM fired
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, id, n FROM outbox_v
"""


class SignalIngest(Component):
    """Applies queued signal deliveries in batched transactions (see the module docstring)."""

    name = "signal-ingest"
    shutdown_stage = 1  # after the consumer stopped feeding it

    def __init__(
        self,
        pool: asyncpg.Pool,
        topology: Topology,
        *,
        wake_relay: Any,
        relay_committed: Callable[[Sequence[OutboxRow]], None] | None = None,
        batch: int = 512,
        queue_size: int = 4096,
        workers: int = 2,
        origins: SignalOrigins | None = None,
    ) -> None:
        super().__init__()
        self.pool = pool
        # None (LEGATO_INSECURE): the publisher headers are stored as sent.
        self.origins = origins
        self.topology = topology
        self.wake_relay = wake_relay
        # Hands a committed batch's outbox rows to the relay (published from memory); None: wake it.
        self.relay_committed = relay_committed or (lambda rows: wake_relay())
        self.batch = batch
        self.workers = max(1, workers)
        self._batcher: GroupCommit[_Queued, None] = GroupCommit(
            self._commit, name=self.name, batch=batch, queue_size=queue_size, rescue=self._store_unappliable
        )
        self._table = TriggerTable()
        self._compiled: dict[tuple[str, int], CompiledWorkflow] = {}
        self.stored = 0
        self.fired = 0

    # ------------------------------------------------------------------ batching

    async def submit(self, d: Delivery[bytes]) -> None:
        """Queue a delivery and wait until the transaction that applied it committed (then it is acked)."""
        await self._batcher.submit(_Queued(d, traceparent_of()))

    async def _run(self) -> None:
        # Several batches in flight overlap their round trips; they are as safe together as two routers.
        await self._batcher.run(workers=self.workers)

    def _on_shutdown(self) -> None:
        self._batcher.close()  # the consumer stopped feeding it: apply what is queued, then return

    async def _commit(self, batch: list[_Queued]) -> list[Exception | None]:
        await self.apply([q.delivery for q in batch], [q.traceparent for q in batch])
        return [None] * len(batch)

    async def _store_unappliable(self, q: _Queued, exc: Exception) -> Exception | None:
        """A signal whose content Postgres or our code refuses (not a lost connection) is stored as
        rejected with that error instead of being retried into the dead letters; else ``exc``."""
        d = q.delivery
        if d.subject == self.topology.signal_wait_subject or not content_error(exc):
            return exc
        sig = self.parse(d, q.traceparent)
        sig.body, sig.error = None, f"cannot be stored: {type(exc).__name__}: {exc}"
        try:
            await run_transaction(self.pool, lambda conn: self.apply_signals(conn, [sig]))
        except asyncio.CancelledError:
            raise
        except Exception as again:
            log.error("signal_reject_failed", signal=sig.name, signal_id=sig.id, error=repr(again))
            return exc
        return None

    async def apply(self, deliveries: Sequence[Delivery[bytes]], traceparents: Sequence[str | None]) -> None:
        """Apply a batch: signals in one transaction, then each wait registration or cancellation in its own."""
        signals: list[IncomingSignal] = []
        registrations: list[SignalWaitMessage] = []
        seen: set[tuple[str, str]] = set()
        for d, tp in zip(deliveries, traceparents, strict=True):
            if d.subject == self.topology.signal_wait_subject:
                try:
                    registrations.append(_decode_wait(d.message))
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    # Fails this batch; applied one by one, only this message is dead-lettered.
                    raise Poison(f"undecodable wait registration: {exc}") from None
                continue
            sig = self.parse(d, tp)
            if (sig.name, sig.id) not in seen:
                seen.add((sig.name, sig.id))
                signals.append(sig)
        if signals:
            rows = await run_transaction(
                self.pool,
                lambda conn: self.apply_signals(conn, signals, locked=True),
                shared_locks=batch_lock_keys(signals),
            )
            if rows:
                self.relay_committed(rows)
        for reg in registrations:
            if await self.apply_wait(reg):
                self.wake_relay()

    async def apply_wait(self, msg: SignalWaitMessage) -> int:
        """Apply a wait registration or cancellation in its own transaction; returns messages emitted."""
        match msg:
            case SignalWaitRegistered():
                return await run_transaction(self.pool, functools.partial(self._apply_registration, reg=msg))
            case SignalWaitsCancelled():
                await run_transaction(self.pool, functools.partial(_cancel_waits, msg=msg))
                return 0
            case _:
                assert_never(msg)

    def parse(self, d: Delivery[bytes], traceparent: str | None) -> IncomingSignal:
        name = self.topology.signal_name(d.subject)
        try:
            published_at = d.raw.metadata.timestamp
        except Exception:
            published_at = datetime.now(UTC)
        sig_id = d.headers.get(MSG_ID_HEADER) or anonymous_signal_id(d.stream_seq, published_at)
        sig = IncomingSignal(
            name=name,
            id=sig_id,
            body=None,
            raw=bytes(d.message),
            headers=d.headers,
            stream_seq=d.stream_seq,
            published_at=published_at,
            traceparent=traceparent,
        )
        if self.origins is None:
            sig.publisher = {k: v for k, v in d.headers.items() if k in PUBLISHER_CLAIMS and v}
        else:
            sig.publisher = self.origins.publisher(
                d.subject, d.headers.get(MSG_ID_HEADER, ""), sig.raw, d.headers
            )
        try:
            sig.body = _decode_json(d.message)
        except msgspec.DecodeError as exc:
            sig.error = f"not valid JSON: {exc}"
            return sig
        except RecursionError:
            sig.error = f"nested deeper than {MAX_SIGNAL_DEPTH} levels"
            return sig
        if not isinstance(sig.body, dict):
            sig.error = f"not a JSON object: got {_json_kind(sig.body)}"
            return sig
        sig.error = _unstorable(sig.body)
        return sig

    # ------------------------------------------------------------------ triggers

    @property
    def trigger_table(self) -> TriggerTable:
        """The active signal triggers as last loaded (``triggers`` reloads them)."""
        return self._table

    async def triggers(self, conn: asyncpg.Connection, epoch: int | None = None) -> TriggerTable:
        """The active signal triggers (reloaded when a registration moved the epoch); hold the lock first."""
        if epoch is None:
            epoch = int(await conn.fetchval("SELECT epoch FROM signal_trigger_epoch"))
        if epoch == self._table.epoch:
            return self._table
        rows = await conn.fetch(
            "SELECT t.workflow_id, t.trigger_id, t.version, t.since, t.registered_at "
            "FROM signal_trigger t WHERE t.active"
        )
        registered: list[RegisteredTrigger] = []
        for r in rows:
            compiled = await self._compile(conn, r["workflow_id"], r["version"])
            if compiled is None:
                continue
            trig = next((t for t in compiled.definition.triggers if t.id == r["trigger_id"]), None)
            if trig is None or trig.type != "signal":
                continue
            registered.append(
                RegisteredTrigger(
                    workflow_id=r["workflow_id"],
                    version=r["version"],
                    trigger=trig,  # type: ignore[arg-type]
                    compiled=compiled,
                    counts_from=r["since"] if r["since"] is not None else r["registered_at"],
                )
            )
        self._table = TriggerTable.build(epoch, registered)
        log.info("signal_triggers_loaded", epoch=epoch, triggers=len(registered))
        return self._table

    async def _compile(
        self, conn: asyncpg.Connection, workflow_id: str, version: int
    ) -> CompiledWorkflow | None:
        key = (workflow_id, version)
        found = self._compiled.get(key)
        if found is None:
            text = await conn.fetchval(
                "SELECT definition::text FROM workflow_version WHERE workflow_id = $1 AND version = $2",
                workflow_id,
                version,
            )
            if text is None:
                return None
            try:
                found = compile_workflow(definition_from_json(str(text).encode()))
            except Exception as exc:
                log.error("signal_trigger_definition_failed", workflow_id=workflow_id, error=repr(exc))
                return None
            if len(self._compiled) > 1024:
                self._compiled.clear()
            self._compiled[key] = found
        return found

    # ------------------------------------------------------------------ the batch transaction

    async def apply_signals(
        self, conn: asyncpg.Connection, signals: list[IncomingSignal], *, locked: bool = False
    ) -> list[OutboxRow]:
        """Store signals (each once), feed triggers and waits, fire complete tuples; returns the outbox rows
        of the messages emitted (for the relay, once committed).

        ``locked``: the transaction already holds ``batch_lock_keys(signals)`` (``run_transaction``'s
        ``shared_locks``, taken with its BEGIN); else they are taken here. A batch of new signals is then
        four round trips: BEGIN with the locks, one read, the signals with their join rows, the fires
        with the outbox; and COMMIT."""
        names = sorted({s.name for s in signals})
        if not locked:
            # Shared: a trigger registration, or a wait registration for one of these names (exclusive),
            # waits for this batch, and this batch for it — so neither misses the other.
            await conn.execute(
                "SELECT pg_advisory_xact_lock_shared(k) FROM unnest($1::bigint[]) AS k",
                batch_lock_keys(signals),
            )
        # Read after the locks (a statement sees what committed before it began): one round trip.
        row = await conn.fetchrow(_READ_BATCH, names)
        table = await self.triggers(conn, row["epoch"])
        schemas = row["schemas"]
        for s in signals:
            schema = schemas.get(s.name)
            if schema is not None and not s.rejected:
                error = schema_error(schema, s.body)
                if error is not None:
                    s.error = f"breaks the schema of {s.name}: {error}"
        # Routed as if every signal were new: the statement that stores them writes the join rows only
        # if it stored every one of them (else they are written again below, from the new ones only).
        members = [member for s in signals if not s.rejected for member in route(s.signal(), table)]
        singles, joined = _group(members)
        new, join_rows = await self._store(conn, signals, joined)
        fresh = [s for s in signals if (s.name, s.id) in new]
        accepted = [s.signal() for s in fresh if not s.rejected]
        rejected = [s for s in fresh if s.rejected]
        for s in rejected:
            log.warning("signal_rejected", signal=s.name, signal_id=s.id, error=s.error)
        m = metrics()
        if accepted:
            m.signals_ingested.add(len(accepted), status="accepted")
        if rejected:
            m.signals_ingested.add(len(rejected), status="rejected")
        if len(signals) > len(fresh):
            m.signals_ingested.add(len(signals) - len(fresh), status="duplicate")
            # Some were stored before (a redelivery): only the new ones count for triggers.
            singles, joined = _group([mb for mb in members if (mb.signal.name, mb.signal.id) in new])
            join_rows = await _upsert_joins(conn, joined)
        candidates = singles + _completed(joined, join_rows)
        waits = await self._satisfy_waits(conn, row["waits"], accepted)
        self.stored += len(fresh)
        return await self._fire(conn, candidates, waits)

    async def _store(
        self, conn: asyncpg.Connection, signals: list[IncomingSignal], joined: dict[_TupleKey, _Tuple]
    ) -> tuple[set[tuple[str, str]], list[asyncpg.Record]]:
        """Insert the signals (a copy of a stored one is skipped) and, if every one was new, upsert the
        join rows of ``joined`` in the same statement; returns the new signals' keys and the join rows
        written (none if a signal was a copy)."""
        # One insertion order for every router (no deadlock on the unique index between batches).
        ordered = sorted(signals, key=lambda s: (s.name, s.id))
        args: list[Any] = [
            [s.name for s in ordered],
            [s.id for s in ordered],
            [None if s.rejected else s.body for s in ordered],
            [
                _storable_text(s.raw[:MAX_REJECTED_BODY].decode(errors="replace")) if s.rejected else None
                for s in ordered
            ],
            [_publisher(s.publisher) for s in ordered],
            [s.publisher.get("Legato-Publisher-Workflow") for s in ordered],
            [s.publisher.get("Legato-Publisher-Instance") for s in ordered],
            [s.publisher.get("Legato-Publisher-Step") for s in ordered],
            [s.published_at for s in ordered],
            [s.stream_seq for s in ordered],
            [s.rejected for s in ordered],
            [_storable_text(s.error[:MAX_REJECTED_ERROR]) if s.error else None for s in ordered],
            [s.traceparent for s in ordered],
        ]
        if not joined:
            stored = await conn.fetch(_INSERT_SIGNALS, *args)
            return {(r["name"], r["id"]) for r in stored}, []
        rows = await conn.fetch(_STORE_AND_JOIN, *args, *_join_args(joined), len(ordered))
        new = {(r["name"], r["id"]) for r in rows if r["name"] is not None}
        return new, [r for r in rows if r["name"] is None]

    async def apply_members(self, conn: asyncpg.Connection, members: list[Member]) -> list[OutboxRow]:
        """Record signals under their tuples and fire every tuple that became complete; returns the
        outbox rows of the runs started (for the relay, once committed)."""
        singles, joined = _group(members)
        candidates = singles + _completed(joined, await _upsert_joins(conn, joined))
        return await self._fire(conn, candidates, [])

    async def _fire(
        self, conn: asyncpg.Connection, candidates: list[_Candidate], also: list[OutgoingMessage]
    ) -> list[OutboxRow]:
        """Fire each candidate tuple that has not fired yet and write, in the same statement, the
        StartRun of each one fired now and the messages ``also`` to the outbox; returns the rows written."""
        if not candidates:
            return await add_to_outbox(conn, also)
        rows: list[tuple[Any, ...]] = []
        # (instance id, its StartRun), for the tuples whose params could be made
        starts: list[tuple[str, OutgoingMessage]] = []
        seen: set[tuple[str, str, str]] = set()
        now = time.time()
        tracer = get_tracer()
        for c in candidates:
            t = c.trigger
            if (t.workflow_id, t.trigger_id, c.tuple_key) in seen:
                continue  # a one-signal trigger with join keys: the batch's first signal of a tuple fires it
            seen.add((t.workflow_id, t.trigger_id, c.tuple_key))
            trigger_key = f"signal:{t.trigger_id}:{c.tuple_key}"
            instance_id = instance_id_for(t.workflow_id, trigger_key)
            used = [c.members[leg] for leg in t.legs]
            signals = [{"name": u["name"], "id": u["id"]} for u in used]
            params: dict[str, Any] | None
            error: str | None = None
            try:
                params = fire_params(t, {leg: c.members[leg]["fields"] for leg in t.legs})
            except (ParamError, SelError) as exc:
                params, error = None, f"params of trigger {t.trigger_id}: {exc}"
            # The tuple completes in the trace of its newest signal and links to the spans of the others.
            traced = sorted((u for u in used if parse_traceparent(u.get("tp"))), key=lambda u: str(u["at"]))
            parent = remote_parent_of(traced[-1]["tp"]) if traced else None
            with tracer.start_as_current_span(
                "signal_router fire",
                context=parent,
                links=[Link(_span_context(u["tp"])) for u in traced[:-1]],
                attributes={
                    "legato.workflow_id": t.workflow_id,
                    "legato.trigger_id": t.trigger_id,
                    "legato.tuple_key": c.tuple_key[:256],
                    "legato.instance_id": instance_id,
                },
            ):
                headers = inject_headers({})
            rows.append(
                (
                    t.workflow_id,
                    t.trigger_id,
                    c.tuple_key,
                    instance_id,
                    trigger_key,
                    _json_text(signals),
                    params,
                    error,
                    headers.get("traceparent"),
                )
            )
            if error is None:
                start = StartRun(
                    workflow_id=t.workflow_id,
                    trigger_key=trigger_key,
                    instance_id=instance_id,
                    trigger=TriggerInfo(
                        kind="signal",
                        id=t.trigger_id,
                        details={
                            "tuple": c.join_values,
                            "signals": [
                                {**sig, "traceparent": u["tp"]} if u.get("tp") else sig
                                for sig, u in zip(signals, used, strict=True)
                            ],
                        },
                    ),
                    params=params or {},
                    requested_at=now,
                )
                starts.append(
                    (
                        instance_id,
                        OutgoingMessage(
                            self.topology.trigger_subject(t.workflow_id),
                            encode(start),
                            msg_id=f"start:{instance_id}",
                            headers=headers,
                        ),
                    )
                )
        cols = list(zip(*rows, strict=True))
        # The outbox's messages: every StartRun, written only if its tuple fires now, then ``also``.
        msgs = [*(msg for _, msg in starts), *also]
        written_if: list[str | None] = [*(i for i, _ in starts), *(None for _ in also)]
        result = await conn.fetch(_FIRE, *[list(c) for c in cols], *outbox_args(msgs), written_if)
        fired = [r for r in result if r["outbox_id"] is None]
        out: list[OutboxRow] = []
        for r in sorted((r for r in result if r["outbox_id"] is not None), key=lambda r: r["n"]):
            out.append((r["outbox_id"], msgs[r["n"] - 1]))
        started = 0
        for r in fired:
            key = (r["workflow_id"], r["trigger_id"], r["tuple_key"])
            if r["error"] is not None:
                log.warning(
                    "signal_trigger_params_failed", workflow_id=key[0], trigger=key[1], error=r["error"]
                )
                continue
            started += 1
            log.debug(
                "signal_trigger_fired",
                workflow_id=key[0],
                trigger=key[1],
                tuple_key=key[2],
                instance_id=r["instance_id"],
            )
        if started:  # one line per batch at info: a line per run would cost more than the firing
            log.info(
                "signal_triggers_fired", runs=started, workflows=sorted({r["workflow_id"] for r in fired})
            )
        self.fired += started
        return out

    # ------------------------------------------------------------------ step waits

    async def _satisfy_waits(
        self, conn: asyncpg.Connection, waits: list[dict[str, Any]], accepted: list[Signal]
    ) -> list[OutgoingMessage]:
        """Open waits (read under the name locks) that a newly stored signal satisfies, first come first."""
        chosen: list[tuple[Mapping[str, Any], Signal]] = []
        for w in waits:
            sig = next(
                (s for s in accepted if s.name == w["name"] and wait_matches(w["match"], s.fields)), None
            )
            if sig is not None:
                chosen.append((w, sig))
        return await self._satisfy(conn, chosen)

    async def _satisfy(
        self, conn: asyncpg.Connection, chosen: list[tuple[Mapping[str, Any], Signal]]
    ) -> list[OutgoingMessage]:
        if not chosen:
            return []
        done = {
            r["id"]
            for r in await conn.fetch(
                # Not for a run that ended meanwhile (its cancellation is on its way here).
                "UPDATE signal_wait w SET satisfied_by = f.sid, satisfied_at = now() "
                "FROM unnest($1::text[], $2::text[]) AS f (wid, sid) "
                "WHERE w.id = f.wid AND w.satisfied_at IS NULL AND NOT w.cancelled "
                "AND EXISTS (SELECT 1 FROM workflow_instance i WHERE i.id = w.instance_id "
                "AND i.status IN ('queued', 'running')) RETURNING w.id",
                [w["id"] for w, _ in chosen],
                [s.id for _, s in chosen],
            )
        }
        out = []
        for w, sig in chosen:
            if w["id"] not in done:
                continue
            msg = SignalWaitSatisfied(
                wait_id=w["id"],
                workflow_id=w["workflow_id"],
                instance_id=w["instance_id"],
                step_id=w["step_id"],
                name=sig.name,
                signal_id=sig.id,
                fields=dict(sig.fields),
            )
            ctx = remote_parent_of(sig.traceparent)
            out.append(
                OutgoingMessage(
                    self.topology.event_subject(w["workflow_id"]),
                    encode(msg),
                    msg_id=f"waitsat:{w['id']}",
                    headers=inject_headers({}, ctx) if ctx is not None else {},
                )
            )
            log.info(
                "signal_wait_satisfied",
                workflow_id=w["workflow_id"],
                instance_id=w["instance_id"],
                step_id=w["step_id"],
                signal=sig.name,
                signal_id=sig.id,
            )
        return out

    async def _apply_registration(self, conn: asyncpg.Connection, *, reg: SignalWaitRegistered) -> int:
        """A step started waiting: store the wait (once) and satisfy it at once from the stored signals.

        Exactly once: under the name's lock (exclusive here, shared by every signal batch) a signal is
        either stored before the wait (and found below) or after it (and its batch sees the wait). Under
        the run's lock (also taken by the cancellation) a wait of a run that has ended is stored
        cancelled, so a cancellation that overtook its registration still holds."""
        # The run's lock first, then the name's (nothing takes them the other way round).
        await conn.execute("SELECT pg_advisory_xact_lock($1::bigint)", _run_lock_key(reg.instance_id))
        await conn.execute("SELECT pg_advisory_xact_lock($1::bigint)", signal_name_lock_key(reg.name))
        status = await conn.fetchval("SELECT status FROM workflow_instance WHERE id = $1", reg.instance_id)
        if status is None:
            return 0  # the run was deleted with its workflow: nothing waits any more
        await conn.execute(
            "INSERT INTO signal_wait (id, workflow_id, instance_id, step_id, name, match, cancelled) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
            reg.wait_id,
            reg.workflow_id,
            reg.instance_id,
            reg.step_id,
            reg.name,
            reg.match,
            status not in ("queued", "running"),
        )
        wait = await conn.fetchrow(
            "SELECT id, workflow_id, instance_id, step_id, name, match FROM signal_wait "
            "WHERE id = $1 AND satisfied_at IS NULL AND NOT cancelled FOR UPDATE",
            reg.wait_id,
        )
        if wait is None:
            return 0
        rows = await conn.fetch(
            "SELECT name, id, params, published_at, traceparent FROM signal "
            "WHERE name = $1 AND NOT rejected AND params @> $2::jsonb ORDER BY published_at, seq LIMIT $3",
            wait["name"],
            containment_filter(wait["match"]),
            WAIT_SCAN_LIMIT,
        )
        for r in rows:
            if wait_matches(wait["match"], r["params"]):
                sig = Signal(r["name"], r["id"], r["params"], r["published_at"], r["traceparent"])
                msgs = await self._satisfy(conn, [(wait, sig)])
                await add_to_outbox(conn, msgs)
                return len(msgs)
        return 0


_TupleKey = tuple[str, str, str]  # (workflow id, trigger id, tuple key)


@dataclass
class _Tuple:
    """A joined trigger's tuple as a batch brings it: the legs' first signals, and the earliest time."""

    member: Member
    legs: dict[str, Any]
    first_at: datetime


def _group(members: list[Member]) -> tuple[list[_Candidate], dict[_TupleKey, _Tuple]]:
    """Members of one-signal triggers as candidates (each complete), members of joined ones by tuple."""
    singles: list[_Candidate] = []
    joined: dict[_TupleKey, _Tuple] = {}
    for m in members:
        entry = _member_json(m)
        if not m.trigger.joined:
            singles.append(_Candidate(m.trigger, m.tuple_key, m.join_values, {m.leg: entry}))
            continue
        key = (m.trigger.workflow_id, m.trigger.trigger_id, m.tuple_key)
        found = joined.get(key)
        if found is None:
            joined[key] = _Tuple(m, {m.leg: entry}, m.signal.published_at)
        else:
            found.legs.setdefault(m.leg, entry)
            found.first_at = min(found.first_at, m.signal.published_at)
    return singles, joined


def _join_args(joined: Mapping[_TupleKey, _Tuple]) -> list[list[Any]]:
    """The arguments of ``_UPSERT_JOIN``, in one key order for every router (no deadlock between batches)."""
    keys = sorted(joined)
    tuples = [joined[k] for k in keys]
    return [
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
        [t.member.join_values for t in tuples],
        [t.legs for t in tuples],
        [t.first_at for t in tuples],
        [t.first_at + timedelta(seconds=t.member.trigger.trigger.expiry) for t in tuples],
    ]


async def _upsert_joins(conn: asyncpg.Connection, joined: Mapping[_TupleKey, _Tuple]) -> list[asyncpg.Record]:
    """Record the batch's signals under their tuples; returns each tuple's row as it is now."""
    if not joined:
        return []
    rows: list[asyncpg.Record] = await conn.fetch(_UPSERT_JOINS, *_join_args(joined))
    return rows


def _completed(joined: Mapping[_TupleKey, _Tuple], rows: Sequence[asyncpg.Record]) -> list[_Candidate]:
    """The tuples whose row now holds every leg and has not fired."""
    out = []
    for r in rows:
        m = joined[(r["workflow_id"], r["trigger_id"], r["tuple_key"])].member
        if r["fired_at"] is None and not missing_legs(m.trigger, r["members"]):
            out.append(_Candidate(m.trigger, m.tuple_key, m.join_values, dict(r["members"])))
    return out


async def _cancel_waits(conn: asyncpg.Connection, *, msg: SignalWaitsCancelled) -> None:
    """The run ended: its open waits are cancelled (under the run's lock: see ``_apply_registration``)."""
    await conn.execute("SELECT pg_advisory_xact_lock($1::bigint)", _run_lock_key(msg.instance_id))
    await conn.execute(
        "UPDATE signal_wait SET cancelled = true WHERE instance_id = $1 AND satisfied_at IS NULL",
        msg.instance_id,
    )


def _run_lock_key(instance_id: str) -> int:
    """The advisory lock key of one run's waits (registrations and the cancellation take it)."""
    digest = hashlib.blake2b(f"legato.signal_wait:{instance_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _member_json(m: Member) -> dict[str, Any]:
    return {
        "name": m.signal.name,
        "id": m.signal.id,
        "at": m.signal.published_at.isoformat(),
        "fields": dict(m.signal.fields),
        "tp": m.signal.traceparent,
    }


def _json_text(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _publisher(headers: Mapping[str, str]) -> str | None:
    if headers.get("Legato-Publisher"):
        return headers["Legato-Publisher"]
    inst = headers.get("Legato-Publisher-Instance")
    if inst:
        return f"{headers.get('Legato-Publisher-Workflow', '')}/{inst}/{headers.get('Legato-Publisher-Step', '')}"
    return None


def _unstorable(body: Any) -> str | None:
    """Why a decoded body cannot be a stored signal (too deep, or a NUL that jsonb refuses), or None."""
    stack: list[tuple[Any, int, str]] = [(body, 1, "")]
    while stack:  # bounded: every value of a decoded (finite) document is visited once
        value, depth, path = stack.pop()
        if depth > MAX_SIGNAL_DEPTH:
            return f"nested deeper than {MAX_SIGNAL_DEPTH} levels (at {path[:200] or 'the top'})"
        if isinstance(value, str):
            if "\x00" in value:
                return f"{path or 'the body'}: contains a NUL character (\\u0000), which cannot be stored"
        elif isinstance(value, dict):
            for k, v in value.items():
                if "\x00" in k:
                    return f"{path or 'the body'}: a key contains a NUL character (\\u0000)"
                stack.append((v, depth + 1, f"{path}.{k}" if path else k))
        elif isinstance(value, list):
            stack.extend((v, depth + 1, f"{path}[{i}]") for i, v in enumerate(value))
    return None


def _storable_text(text: str) -> str:
    """Postgres text holds no NUL: show it escaped."""
    return text.replace("\x00", "\\x00")


def _json_kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _span_context(traceparent: str | None) -> trace.SpanContext:
    ids = parse_traceparent(traceparent)
    assert ids is not None
    return trace.get_current_span(remote_parent(*ids)).get_span_context()
