"""Run strategies: what a new trigger does, and which queued runs start when a slot frees up.

| strategy             | at most running | a new trigger while one runs           | after a failure                  |
|----------------------|-----------------|----------------------------------------|----------------------------------|
| sequential           | 1               | queued, FIFO                           | next queued starts               |
| strict_sequential    | 1               | queued, FIFO                           | queue blocked until unblock/restart |
| first_only           | 1               | recorded as skipped                    | -                                |
| last_only            | 1               | running and queued ones stopped        | -                                |
| serial_latest_only   | 1               | replaces the one queued run            | next queued starts               |
| parallel (N)         | N (0 = paused)  | queued, FIFO beyond N                  | others go on                     |

Queue order is (priority, then arrival), a restarted run first among its priority
(``legato.core.admission.queue_priority``): live runs are all ``normal``, so for them every strategy is
exactly FIFO; backfill runs are ``low`` by default and start only when no live run is queued. Priority
only decides which queued run takes a free slot: the limits above, a strict_sequential block and the
stop grace are applied exactly as without it. ``state.queue`` is kept in that order (loaded sorted,
each new or restarted run placed by ``place_by_priority``), so the next run is always ``queue[0]``.

A stopped run (stop, kill, or replaced under last_only / serial_latest_only) keeps its slot until its
executor confirms that its attempts stopped, or the executor is known dead, at most for a grace period:
the next run waits meanwhile with the reason ``waiting_for_stop``, so two runs never overlap.

Every decision here is made while the actor holds the workflow row lock in the same transaction that
records it, so no interleaving of messages, activations or scheduler restarts can exceed a limit or
start a run twice.
"""

from __future__ import annotations

from legato.core.admission import QueueState, queue_priority, queue_state, running_limit
from legato.core.reasons import Blocked, FirstOnly, Paused, Queued, Superseded, WaitingForStop
from legato.scheduler.engine import RunEngine
from legato.scheduler.state import InstanceState


def limit_of(engine: RunEngine) -> int:
    """How many runs of the workflow may run at once now (``legato.core.admission``)."""
    row = engine.state.row
    return running_limit(row.run_strategy, row.max_concurrency, row.paused)


def _queue_state(engine: RunEngine) -> QueueState:
    row = engine.state.row
    return queue_state(row.run_strategy, row.max_concurrency, row.paused, row.blocked_by)


def queue_reason(engine: RunEngine) -> Queued | Paused | Blocked:
    """Why a run just queued waits."""
    row = engine.state.row
    match _queue_state(engine):
        case QueueState.PAUSED if row.paused:
            return Paused()
        case QueueState.PAUSED:
            return Paused(why="max_concurrency is 0")
        case QueueState.BLOCKED:
            return Blocked(by=row.blocked_by)
        case QueueState.QUEUED:
            return Queued(strategy=row.run_strategy, limit=limit_of(engine))


def admit_new(engine: RunEngine, inst: InstanceState) -> None:
    """Apply the workflow's run strategy to a newly created run."""
    row = engine.state.row
    strategy = row.run_strategy
    # Only the strategies that look at the running runs pay for listing them.
    running = engine.state.running() if strategy in ("first_only", "last_only") else []
    if strategy == "first_only" and (running or engine.state.queue):
        holder = running[0].id if running else engine.state.queue[0]
        engine.finish(
            inst,
            "skipped",
            reason=FirstOnly(running=holder),
            error=f"first_only: run {holder} is still active",
        )
        return
    if strategy == "last_only":
        for other in [*running, *(engine.state.instances[i] for i in list(engine.state.queue))]:
            engine.finish(
                other,
                "stopped",
                reason=Superseded(by=inst.id),
                error=f"superseded by {inst.id}",
            )
    elif strategy == "serial_latest_only":
        for qid in list(engine.state.queue):
            engine.finish(
                engine.state.instances[qid],
                "stopped",
                reason=Superseded(by=inst.id),
                error=f"superseded by {inst.id}",
            )
    engine.enqueue(inst, queue_reason(engine))
    place_by_priority(engine, inst)
    admit(engine)


def place_by_priority(engine: RunEngine, inst: InstanceState, *, restarted: bool = False) -> None:
    """Move a run just put at the back of the queue (or, ``restarted``, at its front) to its place in
    (priority, arrival) order. Only the runs it passes are looked at: a live run passes the few queued
    backfill runs (at most the backfills' concurrency), a restarted backfill run the queued live runs."""
    queue = engine.state.queue
    if len(queue) < 2:
        return
    prio = queue_priority(inst.trigger)
    instances = engine.state.instances
    moved = 0
    if restarted:
        if queue[0] != inst.id:
            return
        for i in range(1, len(queue)):
            if queue_priority(instances[queue[i]].trigger) <= prio:
                break
            moved += 1
        if moved:
            queue.popleft()
            queue.insert(moved, inst.id)
        return
    if queue[-1] != inst.id:
        return
    for i in range(len(queue) - 2, -1, -1):
        if queue_priority(instances[queue[i]].trigger) >= prio:
            break
        moved += 1
    if moved:
        queue.pop()
        queue.insert(len(queue) - moved, inst.id)


def admit(engine: RunEngine) -> None:
    """Start queued runs in queue order (priority, then oldest first) while the strategy has room
    (stopping runs still hold theirs)."""
    row = engine.state.row
    limit = limit_of(engine)
    stopping = len(engine.state.stopping_runs()) if engine.state.stopping else 0
    if _queue_state(engine) is QueueState.BLOCKED:
        # Only the restarted blocker may run until the queue is released (wherever it waits: another
        # restarted run may have gone to the front after it).
        blocker = engine.state.instances.get(row.blocked_by or "")
        if blocker is not None and blocker.status == "queued":
            if row.running_count + stopping < limit:
                engine.start(blocker)
            elif row.running_count < limit:
                _wait_for_stop(engine, blocker)
        return
    while engine.state.queue and row.running_count + stopping < limit:
        inst = engine.state.instances[engine.state.queue[0]]
        engine.start(inst)
        if engine.state.queue and engine.state.queue[0] == inst.id:  # defensive: never spin
            engine.state.queue.popleft()
    if engine.state.queue and row.running_count < limit:
        _wait_for_stop(engine, engine.state.instances[engine.state.queue[0]])


def _wait_for_stop(engine: RunEngine, inst: InstanceState) -> None:
    """The next run would start but for a stopped run's unconfirmed stop: say so on the run."""
    reason = engine.stop_wait_reason()
    if reason is None or isinstance(inst.reason, WaitingForStop):
        return
    inst.reason = reason
    engine.uow.touch_instance(inst)
    engine.note(inst, "waiting_for_stop", reason.message, details={"runs": reason.runs})


def apply_strategy_change(engine: RunEngine) -> None:
    """A new strategy applies to queued runs at once (running ones are never disturbed)."""
    row = engine.state.row
    queue = engine.state.queue
    if row.run_strategy == "serial_latest_only" and len(queue) > 1:
        instances = engine.state.instances
        newest = queue[-1]
        if len({queue_priority(instances[q].trigger) for q in queue}) > 1:
            # the queue is in priority order: the newest arrival is not necessarily last
            newest = max(queue, key=lambda q: instances[q].created_at)
        for qid in [q for q in queue if q != newest]:
            engine.finish(
                engine.state.instances[qid],
                "stopped",
                reason=Superseded(by=newest),
                error=f"superseded by {newest} (run strategy changed to serial_latest_only)",
            )
    if row.run_strategy != "strict_sequential" and row.blocked_by:
        row.blocked_by = None
        row.blocked_since = None
        engine.uow.workflow_dirty = True
