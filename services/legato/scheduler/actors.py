"""One actor per workflow: a task with a bounded mailbox that applies messages in batches.

A consumer loop hands each decoded message to the workflow's actor and waits; the actor drains what is
in its mailbox (up to ``batch``), applies it all in one Postgres transaction that holds the workflow
row lock and re-checks the partition lease, commits, and only then resolves the waiting handlers, which
ack. The common batch (``_apply``'s ``unlocked``) is that transaction in one statement, which takes the
lock and checks what the batch was computed from as it writes. Idle actors are passivated and rebuilt
from Postgres on their next message.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, assert_never

import asyncpg
from opentelemetry import trace
from opentelemetry.trace import SpanContext

from legato.bus.consumer import Poison, Retry
from legato.bus.publisher import OutgoingMessage
from legato.bus.topology import Topology, partition_of
from legato.core.progress import ForeachProgress
from legato.core.reasons import Inactive, UnknownVersion
from legato.lifecycle.component import Component
from legato.protocol import encode
from legato.protocol.messages import (
    ActionRequest,
    AttemptFinished,
    AttemptStarted,
    ChildFinished,
    SignalWaitSatisfied,
    SignalWaitsCancelled,
    StartRun,
    WorkflowChanged,
)
from legato.scheduler import actions, repository, run_events, run_spans, writes
from legato.scheduler.definition_cache import DefinitionCache
from legato.scheduler.engine import DISPATCH_LIMITS, DispatchLimits, RunEngine
from legato.scheduler.leases import LeaseGuard, LeaseLost, PartitionLeaser
from legato.scheduler.mailbox import COMPUTE_ONLY, Envelope, Message, TimerFired, give_way
from legato.scheduler.state import UnitOfWork, WorkflowState, now_utc
from legato.scheduler.strategies import admit, admit_new, apply_strategy_change
from legato.store.batcher import GroupCommit
from legato.telemetry import bind_context, get_logger, metrics

log = get_logger("legato.scheduler")

# Errors that say "this process's transaction was ended under it" (paused past the idle timeout, the
# connection cut), never "this message is bad".
OWNERSHIP_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.exceptions.IdleInTransactionSessionTimeoutError,
    asyncpg.PostgresConnectionError,
)


class WorkflowActor:
    def __init__(self, registry: ActorRegistry, workflow_id: str) -> None:
        self.registry = registry
        self.workflow_id = workflow_id
        self.partition = partition_of(workflow_id, registry.topology.partitions)
        # The mailbox: messages wait here and are applied in batches of one transaction.
        self.mailbox: GroupCommit[Envelope, None] = GroupCommit(
            self._commit,
            name=f"actor:{workflow_id}",
            batch=registry.batch,
            queue_size=registry.mailbox_size,
            batch_error=self._batch_error,
            closed_error=lambda: Retry(1.0, "scheduler shutting down"),
        )
        self.state: WorkflowState | None = None
        self.closed = False
        self.items_cache: dict[tuple[str, str], Any] = {}
        self.task: asyncio.Task[None] | None = None
        self.missing_versions: set[int] = set()  # asked for by starts of the current batch, not found
        self._unlocked: writes.Unlocked | None = None  # the current batch, while it has no transaction block
        self._write_seconds = 0.0  # the last batch's final write, with its commit (``_record_batch``)

    @property
    def batches(self) -> int:
        return self.mailbox.batches

    async def run(self) -> None:
        """Apply batches until idle for the registry's idle timeout (then the actor is passivated)."""
        try:
            await self.mailbox.run(idle_timeout=self.registry.idle_timeout)
        finally:
            self.closed = True
        self.registry.forget(self)

    def _fail_pending(self, exc: Exception) -> None:
        self.mailbox.fail_pending(exc)

    async def _commit(self, batch: list[Envelope]) -> list[Exception | None]:
        started = time.perf_counter()
        with bind_context(workflow_id=self.workflow_id):
            try:
                try:
                    outcomes = await self._apply(batch, unlocked=True)
                except writes.WorkflowChangedUnderBatch as exc:
                    # Nothing was written: compute the batch again from Postgres, under the lock.
                    log.info("batch_recomputed", reason=str(exc))
                    self._unlocked = None
                    self._forget_state()
                    outcomes = await self._apply(batch, unlocked=False)
            except Exception:
                self._forget_state()  # memory may be ahead of what committed: rebuild from Postgres
                raise
            finally:
                self._unlocked = None
        self._record_batch(len(batch), time.perf_counter() - started)
        return outcomes

    def _record_batch(self, messages: int, seconds: float) -> None:
        """The committed batch's size and its time (``legato.scheduler.batch.*``): the write is its final
        statement with its commit, the rest (computing, reads, locks, handing rows over) is compute."""
        m = metrics()
        if not m.enabled:
            return
        write = min(self._write_seconds, seconds)
        m.batch_messages.record(messages)
        m.batch_duration.record(seconds - write, phase="compute")
        m.batch_duration.record(write, phase="write")

    def _forget_state(self) -> None:
        self.state = None
        self.items_cache.clear()

    def _batch_error(self, exc: Exception) -> Exception | None:
        if self._ownership_problem(exc):
            # Not a failure of the messages: this process lost the partition, or was paused long
            # enough for Postgres to end its transaction. They go back (uncounted) for the owner.
            return Retry(2.0, str(exc) or type(exc).__name__)
        return None

    def _ownership_problem(self, exc: Exception) -> bool:
        if isinstance(exc, LeaseLost):
            return True
        # A transaction ended under us while this process still holds the lease was not paused: it was
        # slow (a batch computing for longer than the idle timeout), and that counts as a failure.
        return isinstance(exc, OWNERSHIP_ERRORS) and self.registry.leaser.token(self.partition) is None

    async def _apply(self, batch: list[Envelope], *, unlocked: bool) -> list[Exception | None]:
        """Apply ``batch`` in one transaction that holds the workflow row lock from its first statement,
        or, ``unlocked``, when the workflow's state is in memory and every message only computes
        (``COMPUTE_ONLY``), with no statement before its one self-checking write (``writes``)."""
        reg = self.registry
        uow = UnitOfWork()
        self._write_seconds = 0.0
        starts = [e.message for e in batch if isinstance(e.message, StartRun)]
        async with reg.pool.acquire() as conn, contextlib.AsyncExitStack() as stack:
            config: repository.WorkflowConfig | None
            existing: set[str] = set()
            known = self.state
            if unlocked and known is not None and all(isinstance(e.message, COMPUTE_ONLY) for e in batch):
                # Computed with the configuration in memory; the runs it starts must be new.
                config = repository.WorkflowConfig.of(known.row)
                new_runs = [m.instance_id for m in starts if m.instance_id not in known.instances]
                self._unlocked = writes.Unlocked(stack, config, new_runs)
            else:
                await stack.enter_async_context(conn.transaction())
                config, existing = await repository.lock_workflow(
                    conn, self.workflow_id, reg.leaser.guard(self.partition), [m.instance_id for m in starts]
                )
            if config is None:
                self.state = None  # deleted: a workflow pushed again under this id starts afresh
                unknown = Poison(f"unknown workflow {self.workflow_id!r}")
                return [unknown if isinstance(e.message, StartRun | ActionRequest) else None for e in batch]
            if self.state is None:
                state = await repository.load_workflow_state(conn, self.workflow_id)
                assert state is not None
                self.state = state
            state = self.state
            # Configuration may change through the API; the actor owns counters and the blocked flag.
            state.row.active = config.active
            state.row.active_version = config.active_version
            state.row.run_strategy = config.run_strategy
            state.row.max_concurrency = config.max_concurrency
            state.row.paused = config.paused
            versions = {state.row.active_version, *state.instances.versions()}
            asked = {m.version for m in starts if m.version is not None}
            versions.update(asked)
            self.missing_versions = await reg.definitions.ensure(
                conn, self.workflow_id, versions, optional=asked
            )
            versions -= self.missing_versions
            tags = self._tag_names(versions)
            if tags and self._unlocked is not None:
                # Concurrency tags are shared with other workflows: locked for the whole batch.
                await self._lock_late(conn)
            state.tags = await repository.lock_tags(conn, tags)
            # Results waiting in the mailbox for a later batch: their attempts left the executor queue.
            waiting = self.mailbox.queued()
            state.begin_batch(
                {e.message.attempt_id for e in waiting if isinstance(e.message, AttemptFinished)}
            )
            engine = RunEngine(
                state,
                uow,
                topology=reg.topology,
                compiled=reg.definitions.get,
                items_cache=self.items_cache,
                dispatch=reg.dispatch,
            )
            for done, env in enumerate(batch):
                await give_way(done)
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
            # The final lease check rides in the last statement before the commit.
            write_started = time.perf_counter()
            await self._flush(conn, engine, guard=reg.leaser.guard(self.partition, final=True))
        self._write_seconds = time.perf_counter() - write_started  # with the commit (leaving the block)
        if uow.outbox_rows:
            # First: lifecycle events and work items wait for nothing else; the relay publishes the
            # committed rows from memory.
            reg.relay_committed(uow.outbox_rows)
        if uow.flushed_events:
            reg.events_committed()
        run_spans.emit(uow.spans)
        if uow.flushed_timers:
            reg.wake_timers()
        return [None] * len(batch)

    async def _flush(
        self, conn: asyncpg.Connection, engine: RunEngine, guard: LeaseGuard | None = None
    ) -> None:
        """Write what the batch recorded so far, with a cancellation of the signal waits of every run
        that ended and has steps that wait for signals (the router alone writes ``signal_wait``)."""
        uow = engine.uow
        for instance_id in uow.cancel_waits:
            inst = uow.instances.get(instance_id)
            if inst is None or not inst.steps:
                continue
            graph = engine.graph(inst)
            if any(graph.step(sid).wait_for_signals for sid in inst.steps):
                cancel = SignalWaitsCancelled(workflow_id=inst.workflow_id, instance_id=inst.id)
                uow.outbox.append(
                    OutgoingMessage(
                        self.registry.topology.signal_wait_subject,
                        encode(cancel),
                        msg_id=f"waitcancel:{inst.id}:{inst.run_number}",
                    )
                )
        uow.cancel_waits.clear()
        instances = engine.state.instances
        run_events.record(
            uow,
            self.registry.topology,
            self.workflow_id,
            lambda iid: uow.instances.get(iid) or instances.get(iid),
        )
        unlocked = self._unlocked
        if unlocked is not None and (guard is None or writes.needs_follow(uow)):
            await self._lock_late(conn)  # more than one statement to write: in a transaction block
            unlocked = None
        await writes.flush(conn, uow, engine.state.row, guard=guard, unlocked=unlocked)

    async def _lock_late(self, conn: asyncpg.Connection) -> None:
        unlocked, self._unlocked = self._unlocked, None
        assert unlocked is not None
        await writes.lock_late(conn, self.workflow_id, self.registry.leaser.guard(self.partition), unlocked)

    async def _collect(self, conn: asyncpg.Connection, engine: RunEngine) -> None:
        """Finish foreach steps whose iterations all ended, with their outputs in item order."""
        uow = engine.uow
        while uow.collect:
            await self._flush(conn, engine)  # the iterations' rows first
            instance_id, step_id = uow.collect.pop(0)
            rows = await repository.foreach_iterations(conn, instance_id, step_id)
            parent = engine.state.instances.get(instance_id)
            if parent is None:
                continue
            st = parent.steps.get(step_id)
            total = st.progress.total if st and isinstance(st.progress, ForeachProgress) else len(rows)
            results: list[Any] = [None] * total
            for r in rows:
                if 0 <= r.iteration < total and r.status == "succeeded":
                    results[r.iteration] = r.outputs or {}
            engine.complete_foreach(parent, step_id, results)

    def _tag_names(self, versions: set[int]) -> list[str]:
        """The named concurrency tags this workflow's steps use (``repository.lock_tags`` locks them)."""
        tags: set[str] = set()
        for version in versions:
            compiled = self.registry.definitions.get(self.workflow_id, version)
            for sid in compiled.topo_order:
                tags.update(compiled.step(sid).concurrency_tags)
        return sorted(tags)

    async def _apply_one(
        self,
        conn: asyncpg.Connection,
        engine: RunEngine,
        msg: Message,
        existing: set[str],
        parent: SpanContext | None = None,
    ) -> None:
        match msg:
            case StartRun():
                with bind_context(workflow_id=msg.workflow_id, instance_id=msg.instance_id):
                    self._start(engine, msg, existing, parent)
            case AttemptFinished():
                with bind_context(
                    instance_id=msg.instance_id, step_id=msg.step_id, attempt_id=msg.attempt_id
                ):
                    engine.on_attempt_finished(msg)
            case AttemptStarted():
                with bind_context(
                    instance_id=msg.instance_id, step_id=msg.step_id, attempt_id=msg.attempt_id
                ):
                    engine.on_attempt_started(msg)
            case SignalWaitSatisfied():
                with bind_context(instance_id=msg.instance_id, step_id=msg.step_id):
                    engine.on_signal_wait_satisfied(msg)
            case ChildFinished():
                with bind_context(instance_id=msg.parent_instance_id, step_id=msg.parent_step_id):
                    engine.on_child_finished(msg)
            case TimerFired():
                if await repository.take_timer(conn, msg.id):  # else fired before, or cancelled: exactly once
                    self._fire_timer(engine, msg)
            case ActionRequest():
                await actions.apply_action(conn, engine, msg)
                target = engine.state.instances.get(msg.instance_id or "")
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
            case WorkflowChanged():
                apply_strategy_change(engine)  # the row was refreshed above; admit() runs after every message
            case _:
                assert_never(msg)

    def _start(
        self, engine: RunEngine, msg: StartRun, existing: set[str], parent: SpanContext | None
    ) -> None:
        state = engine.state
        if msg.instance_id in existing or msg.instance_id in state.instances:
            return  # the same trigger again: one run per trigger key
        existing.add(msg.instance_id)
        version = state.row.active_version if msg.version is None else msg.version
        inst = engine.new_instance(msg, version, "created", parent)
        if version in self.missing_versions:
            # Never dead-letter a start (its run would stay pending forever): the run fails.
            error = f"workflow {msg.workflow_id!r} has no version {version}"
            engine.finish(inst, "failed", reason=UnknownVersion(), error=error)
            return
        if not state.row.active and msg.parent is None:
            engine.finish(inst, "skipped", reason=Inactive(), error="workflow is inactive")
            return
        if not engine.resolve_params(inst):
            return
        if msg.parent is not None and not msg.apply_run_strategy:
            engine.start(inst)
        else:
            admit_new(engine, inst)

    def _fire_timer(self, engine: RunEngine, msg: TimerFired) -> None:
        if msg.kind == "stop_grace":
            engine.on_stop_grace_timer(msg.attempt_id)  # the run has ended: not in state.instances
            return
        target = engine.state.instances.get(msg.instance_id)
        if target is None:
            return
        run_spans.point(engine.uow, target, "timer.fired", now_utc(), kind=msg.kind, step_id=msg.step_id)
        if msg.kind == "retry" and msg.step_id:
            engine.on_retry_timer(target, msg.step_id)
        elif msg.kind == "step_timeout" and msg.step_id:
            engine.on_step_timeout_timer(target, msg.step_id, msg.attempt_id)
        elif msg.kind == "run_timeout":
            engine.on_run_timeout_timer(target)


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
        relay_committed: Callable[[Sequence[tuple[int, OutgoingMessage]]], None] = lambda rows: None,
        events_committed: Callable[[], None] = lambda: None,
        wake_timers: Callable[[], None] = lambda: None,
        batch: int = 256,
        mailbox_size: int = 1024,
        idle_timeout: float = 60.0,
        dispatch: DispatchLimits = DISPATCH_LIMITS,
    ) -> None:
        super().__init__()
        self.pool = pool
        self.topology = topology
        self.leaser = leaser
        self.definitions = definitions or DefinitionCache()
        self.relay_committed = relay_committed
        self.events_committed = events_committed
        self.wake_timers = wake_timers
        self.batch = batch
        self.mailbox_size = mailbox_size
        self.idle_timeout = idle_timeout
        self.dispatch = dispatch
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
        await actor.mailbox.submit(
            Envelope(message, parent=parent or trace.get_current_span().get_span_context())
        )

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
