"""One actor per workflow: a task with a bounded mailbox that applies messages in batches.

A consumer loop hands each decoded message to the workflow's actor and waits; the actor drains what is
in its mailbox (up to ``batch``), applies it all in one Postgres transaction that holds the workflow
row lock and re-checks the partition lease, commits, and only then resolves the waiting handlers, which
ack. Idle actors are passivated and rebuilt from Postgres on their next message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from opentelemetry import trace
from opentelemetry.trace import SpanContext

from legato.bus.consumer import Poison, Retry
from legato.bus.publisher import OutgoingMessage
from legato.bus.topology import Topology, partition_of
from legato.protocol import encode
from legato.protocol.messages import (
    ActionRequest,
    AttemptFinished,
    AttemptStarted,
    ChildFinished,
    SignalWaitSatisfied,
    StartRun,
    WorkflowChanged,
)
from legato.runtime.component import Component
from legato.scheduler import actions, run_spans
from legato.scheduler.definitions import DefinitionCache
from legato.scheduler.engine import DISPATCH_WINDOW, RunEngine
from legato.scheduler.leases import LeaseLost, PartitionLeaser
from legato.scheduler.state import TagState, UnitOfWork, WorkflowState, load_workflow_state, now_utc
from legato.scheduler.strategies import admit, admit_new, apply_strategy_change
from legato.telemetry import bind_context, get_logger

log = get_logger("legato.scheduler")

# Errors that say "this process's transaction was ended under it" (paused past the idle timeout, the
# connection cut), never "this message is bad".
OWNERSHIP_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.exceptions.IdleInTransactionSessionTimeoutError,
    asyncpg.PostgresConnectionError,
)


@dataclass(frozen=True)
class TimerFired:
    id: int
    workflow_id: str
    instance_id: str
    kind: str
    step_id: str | None
    attempt_id: str | None


Message = (
    StartRun
    | ActionRequest
    | WorkflowChanged
    | ChildFinished
    | AttemptStarted
    | AttemptFinished
    | SignalWaitSatisfied
    | TimerFired
)


@dataclass
class Envelope:
    message: Message
    future: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    # The span that delivered the message (the consumer's), so the run's trace can continue from it.
    parent: SpanContext | None = None


class WorkflowActor:
    def __init__(self, registry: ActorRegistry, workflow_id: str) -> None:
        self.registry = registry
        self.workflow_id = workflow_id
        self.partition = partition_of(workflow_id, registry.topology.partitions)
        self.mailbox: asyncio.Queue[Envelope] = asyncio.Queue(maxsize=registry.mailbox_size)
        self.state: WorkflowState | None = None
        self.closed = False
        self.items_cache: dict[tuple[str, str], Any] = {}
        self.task: asyncio.Task[None] | None = None
        self.batches = 0
        self.missing_versions: set[int] = set()  # asked for by starts of the current batch, not found

    async def run(self) -> None:
        reg = self.registry
        try:
            while True:
                try:
                    first = await asyncio.wait_for(self.mailbox.get(), timeout=reg.idle_timeout)
                except TimeoutError:
                    if self.mailbox.empty():
                        self.closed = True
                        reg.forget(self)
                        return
                    continue
                batch = [first]
                while len(batch) < reg.batch and not self.mailbox.empty():
                    batch.append(self.mailbox.get_nowait())
                await self.process(batch)
        except asyncio.CancelledError:
            self.closed = True
            self._fail_pending(Retry(1.0, "scheduler shutting down"))
            raise

    def _fail_pending(self, exc: BaseException) -> None:
        while not self.mailbox.empty():
            env = self.mailbox.get_nowait()
            if not env.future.done():
                env.future.set_exception(exc)

    async def process(self, batch: list[Envelope]) -> None:
        with bind_context(workflow_id=self.workflow_id):
            await self._process(batch)

    async def _process(self, batch: list[Envelope]) -> None:
        try:
            await self._apply(batch)
        except Exception as exc:
            self.state = None  # memory may be ahead of what committed: rebuild from Postgres
            self.items_cache.clear()
            if self._ownership_problem(exc):
                # Not a failure of the messages: this process lost the partition, or was paused long
                # enough for Postgres to end its transaction. They go back (uncounted) for the owner.
                for env in batch:
                    if not env.future.done():
                        env.future.set_exception(Retry(2.0, str(exc) or type(exc).__name__))
                return
            if len(batch) == 1:
                if not batch[0].future.done():
                    batch[0].future.set_exception(exc)
                log.warning("actor_message_failed", workflow_id=self.workflow_id, error=repr(exc))
                return
            log.warning("actor_batch_failed", workflow_id=self.workflow_id, size=len(batch), error=repr(exc))
            for env in batch:  # isolate the message that fails
                await self._process([env])
            return
        for env in batch:
            if not env.future.done():
                env.future.set_result(None)

    def _ownership_problem(self, exc: Exception) -> bool:
        if isinstance(exc, LeaseLost):
            return True
        # A transaction ended under us while this process still holds the lease was not paused: it was
        # slow (a batch computing for longer than the idle timeout), and that counts as a failure.
        return isinstance(exc, OWNERSHIP_ERRORS) and self.registry.leaser.token(self.partition) is None

    async def _apply(self, batch: list[Envelope]) -> None:
        reg = self.registry
        uow = UnitOfWork()
        async with reg.pool.acquire() as conn, conn.transaction():
            await reg.leaser.check(conn, self.partition)
            row = await conn.fetchrow(
                "SELECT active, active_version, run_strategy, max_concurrency, paused FROM workflow "
                "WHERE id = $1 FOR UPDATE",
                self.workflow_id,
            )
            if row is None:
                self.state = None  # deleted: a workflow pushed again under this id starts afresh
                for env in batch:
                    if isinstance(env.message, StartRun | ActionRequest):
                        env.future.set_exception(Poison(f"unknown workflow {self.workflow_id!r}"))
                    else:
                        env.future.set_result(None)
                return
            if self.state is None:
                state = await load_workflow_state(conn, self.workflow_id)
                assert state is not None
                self.state = state
            state = self.state
            # Configuration may change through the API; the actor owns counters and the blocked flag.
            state.row.active = row["active"]
            state.row.active_version = row["active_version"]
            state.row.run_strategy = row["run_strategy"]
            state.row.max_concurrency = row["max_concurrency"]
            state.row.paused = row["paused"]
            versions = {state.row.active_version, *(i.version for i in state.instances.values())}
            starts = [e.message for e in batch if isinstance(e.message, StartRun)]
            asked = {m.version for m in starts if m.version is not None}
            versions.update(asked)
            self.missing_versions = await reg.definitions.ensure(
                conn, self.workflow_id, versions, optional=asked
            )
            versions -= self.missing_versions
            existing: set[str] = set()
            if starts:
                existing = {
                    r["id"]
                    for r in await conn.fetch(
                        "SELECT id FROM workflow_instance WHERE id = ANY($1::text[])",
                        [m.instance_id for m in starts],
                    )
                }
            await self._load_tags(conn, state, versions)
            state.count_unstarted()  # the per-message bookkeeping never drifts past one batch
            engine = RunEngine(
                state,
                uow,
                topology=reg.topology,
                compiled=reg.definitions.get,
                items_cache=self.items_cache,
                dispatch_window=reg.dispatch_window,
            )
            for env in batch:
                if env.future.done():
                    continue
                await self._apply_one(conn, engine, env.message, existing, env.parent)
                await self._collect(conn, engine)
                admit(engine)
                if engine.permits_freed or isinstance(env.message, WorkflowChanged):
                    engine.permits_freed = False
                    engine.retry_waiting()
                engine.drain_dispatch_backlog()
            for other in sorted(uow.nudges - {self.workflow_id}):
                uow.outbox.append(
                    OutgoingMessage(
                        reg.topology.trigger_subject(other),
                        encode(WorkflowChanged(workflow_id=other, change="permit freed")),
                    )
                )
            await uow.flush(conn, state.row)
            await reg.leaser.check(conn, self.partition, final=True)
        self.batches += 1
        run_spans.emit(uow.spans)
        if uow.progress:
            await reg.publish_progress(list(uow.progress.values()))
        if uow.flushed_outbox:
            reg.wake_relay()
        if uow.flushed_timers:
            reg.wake_timers()

    async def _collect(self, conn: asyncpg.Connection, engine: RunEngine) -> None:
        """Finish foreach steps whose iterations all ended, with their outputs in item order."""
        uow = engine.uow
        while uow.collect:
            await uow.flush(conn, engine.state.row)  # the iterations' rows first
            instance_id, step_id = uow.collect.pop(0)
            rows = await conn.fetch(
                "SELECT DISTINCT ON (parent_iteration) parent_iteration, status, outputs FROM workflow_instance "
                "WHERE parent_instance_id = $1 AND parent_step_id = $2 ORDER BY parent_iteration, seq DESC",
                instance_id,
                step_id,
            )
            parent = engine.state.instances.get(instance_id)
            if parent is None:
                continue
            st = parent.steps.get(step_id)
            total = (st.progress or {}).get("total", len(rows)) if st else len(rows)
            results: list[Any] = [None] * total
            for r in rows:
                if 0 <= r["parent_iteration"] < total and r["status"] == "succeeded":
                    results[r["parent_iteration"]] = r["outputs"] or {}
            engine.complete_foreach(parent, step_id, results)

    async def _load_tags(self, conn: asyncpg.Connection, state: WorkflowState, versions: set[int]) -> None:
        """Lock and load the named concurrency tags this workflow's steps use (in tag order: no deadlocks)."""
        tags: set[str] = set()
        for version in versions:
            compiled = self.registry.definitions.get(self.workflow_id, version)
            for sid in compiled.topo_order:
                tags.update(compiled.step(sid).concurrency_tags)
        state.tags = {}
        if not tags:
            return
        names = sorted(tags)
        limits = {
            r["tag"]: r["max_running"]
            for r in await conn.fetch(
                "SELECT tag, max_running FROM concurrency_tag WHERE tag = ANY($1::text[]) ORDER BY tag FOR UPDATE",
                names,
            )
        }
        in_use = {
            r["tag"]: r["n"]
            for r in await conn.fetch(
                "SELECT tag, count(*) AS n FROM tag_permit WHERE tag = ANY($1::text[]) GROUP BY tag", names
            )
        }
        for tag in names:
            state.tags[tag] = TagState(tag=tag, limit=limits.get(tag), in_use=int(in_use.get(tag, 0)))
        for r in await conn.fetch(
            "SELECT tag, since, workflow_id, instance_id, step_id FROM tag_waiter WHERE tag = ANY($1::text[]) "
            "ORDER BY since",
            names,
        ):
            state.tags[r["tag"]].waiters.append(
                (r["since"], r["workflow_id"], r["instance_id"], r["step_id"])
            )

    async def _apply_one(
        self,
        conn: asyncpg.Connection,
        engine: RunEngine,
        msg: Message,
        existing: set[str],
        parent: SpanContext | None = None,
    ) -> None:
        state = engine.state
        if isinstance(msg, StartRun):
            with bind_context(workflow_id=msg.workflow_id, instance_id=msg.instance_id):
                if msg.instance_id in existing or msg.instance_id in state.instances:
                    return  # the same trigger again: one run per trigger key
                existing.add(msg.instance_id)
                version = state.row.active_version if msg.version is None else msg.version
                inst = engine.new_instance(msg, version, "created", parent)
                if version in self.missing_versions:
                    # Never dead-letter a start (its run would stay pending forever): the run fails.
                    error = f"workflow {msg.workflow_id!r} has no version {version}"
                    engine.finish(inst, "failed", reason={"code": "unknown_version"}, error=error)
                    return
                if not state.row.active and msg.parent is None:
                    engine.finish(inst, "skipped", reason={"code": "inactive"}, error="workflow is inactive")
                    return
                if not engine.resolve_params(inst):
                    return
                if msg.parent is not None and not msg.apply_run_strategy:
                    engine.start(inst)
                else:
                    admit_new(engine, inst)
        elif isinstance(msg, AttemptFinished):
            with bind_context(instance_id=msg.instance_id, step_id=msg.step_id, attempt_id=msg.attempt_id):
                engine.on_attempt_finished(msg)
        elif isinstance(msg, AttemptStarted):
            with bind_context(instance_id=msg.instance_id, step_id=msg.step_id, attempt_id=msg.attempt_id):
                engine.on_attempt_started(msg)
        elif isinstance(msg, SignalWaitSatisfied):
            with bind_context(instance_id=msg.instance_id, step_id=msg.step_id):
                engine.on_signal_wait_satisfied(msg)
        elif isinstance(msg, ChildFinished):
            with bind_context(instance_id=msg.parent_instance_id, step_id=msg.parent_step_id):
                engine.on_child_finished(msg)
        elif isinstance(msg, TimerFired):
            fired = await conn.fetchval("DELETE FROM timer WHERE id = $1 RETURNING id", msg.id)
            if fired is None:
                return  # fired before, or cancelled: exactly once
            if msg.kind == "stop_grace":
                engine.on_stop_grace_timer(msg.attempt_id)  # the run has ended: not in state.instances
                return
            target = state.instances.get(msg.instance_id)
            if target is None:
                return
            run_spans.point(engine.uow, target, "timer.fired", now_utc(), kind=msg.kind, step_id=msg.step_id)
            if msg.kind == "retry" and msg.step_id:
                engine.on_retry_timer(target, msg.step_id)
            elif msg.kind == "step_timeout" and msg.step_id:
                engine.on_step_timeout_timer(target, msg.step_id, msg.attempt_id)
            elif msg.kind == "run_timeout":
                engine.on_run_timeout_timer(target)
        elif isinstance(msg, ActionRequest):
            await actions.apply_action(conn, engine, msg)
            target = state.instances.get(msg.instance_id or "")
            if target is not None:
                run_spans.point(
                    engine.uow,
                    target,
                    "operator.action",
                    now_utc(),
                    action=msg.action,
                    actor=msg.actor,
                    reason=msg.reason,
                )
        elif isinstance(msg, WorkflowChanged):
            apply_strategy_change(engine)  # the row was refreshed above; admit() runs after every message


class ActorRegistry(Component):
    """Routes messages to workflow actors, creating them on demand; supervises their tasks."""

    name = "actor-registry"
    shutdown_stage = 1  # after the consumers stopped feeding it

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        topology: Topology,
        leaser: PartitionLeaser,
        definitions: DefinitionCache | None = None,
        wake_relay: Callable[[], None] = lambda: None,
        wake_timers: Callable[[], None] = lambda: None,
        publish_core: Callable[[list[tuple[str, bytes]]], Awaitable[None]] | None = None,
        batch: int = 256,
        mailbox_size: int = 1024,
        idle_timeout: float = 60.0,
        dispatch_window: int = DISPATCH_WINDOW,
    ) -> None:
        super().__init__()
        self.pool = pool
        self.topology = topology
        self.leaser = leaser
        self.definitions = definitions or DefinitionCache()
        self.wake_relay = wake_relay
        self.wake_timers = wake_timers
        self.publish_core = publish_core
        self.batch = batch
        self.mailbox_size = mailbox_size
        self.idle_timeout = idle_timeout
        self.dispatch_window = dispatch_window
        self.actors: dict[str, WorkflowActor] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._ready = asyncio.Event()

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            self._ready.set()
            await self.wait_stopping()
            for actor in list(self.actors.values()):
                if actor.task is not None:
                    actor.task.cancel()
        self._tg = None

    async def publish_progress(self, items: list[Any]) -> None:
        if self.publish_core is not None:
            await self.publish_core(
                [(self.topology.progress_subject(p.workflow_id), encode(p)) for p in items]
            )

    def forget(self, actor: WorkflowActor) -> None:
        if self.actors.get(actor.workflow_id) is actor:
            del self.actors[actor.workflow_id]

    async def deliver(self, workflow_id: str, message: Message, parent: SpanContext | None = None) -> None:
        """Hand a message to its workflow's actor and wait until its effects are committed."""
        await self._ready.wait()
        if self.stopping or self._tg is None:
            raise Retry(1.0, "scheduler shutting down")
        actor = self.actors.get(workflow_id)
        if actor is None or actor.closed:
            actor = WorkflowActor(self, workflow_id)
            self.actors[workflow_id] = actor
            actor.task = self._tg.create_task(self._supervise(actor), name=f"actor:{workflow_id}")
        env = Envelope(message, parent=parent or trace.get_current_span().get_span_context())
        await actor.mailbox.put(env)
        await env.future

    async def _supervise(self, actor: WorkflowActor) -> None:
        try:
            await actor.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # An actor's own failure must not take the task group (and every other actor) down.
            log.error("actor_crashed", workflow_id=actor.workflow_id, error=repr(exc), exc_info=True)
            actor.closed = True
            self.forget(actor)
            actor._fail_pending(Retry(1.0, "actor crashed"))

    async def drop_partition(self, partition: int) -> None:
        """The partition moved to another replica: stop its actors and forget their state."""
        doomed = [a for a in self.actors.values() if a.partition == partition]
        for actor in doomed:
            actor.closed = True
            self.forget(actor)
            if actor.task is not None:
                actor.task.cancel()
        await asyncio.gather(*(a.task for a in doomed if a.task is not None), return_exceptions=True)

    def stats(self) -> dict[str, Any]:
        return {"actors": len(self.actors), "at": time.time()}


DeliverFn = Callable[[str, Message], Awaitable[None]]
