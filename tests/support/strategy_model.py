"""A pure model of Legato's run strategies, and the invariants any implementation must keep.

The model is the specification in executable form (DESIGN.md section 3): given the same operations
(triggers, step outcomes, stops, restarts, unblocks) it says what state every run must be in. The
history checker judges a sequence of run events - from the model, the in-memory engine, or the
timeline rows of a real scheduler in Postgres - against the invariants, without trusting the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

ACTIVE = ("queued", "running")
ENDED = ("succeeded", "failed", "timed_out", "stopped", "skipped")
RESTARTABLE = ("failed", "timed_out", "stopped")
FIFO_STRATEGIES = ("sequential", "strict_sequential", "parallel", "serial_latest_only")


def limit_for(strategy: str, max_concurrency: int) -> int:
    return max_concurrency if strategy == "parallel" else 1


@dataclass
class ModelRun:
    name: str
    seq: int
    status: str = "created"
    starts: int = 0
    restarts: int = 0


@dataclass(frozen=True)
class RunEvent:
    """One thing that happened to a run, in commit order: created, started, an end status, or an
    operator effect (restart_requested, unblocked)."""

    run: str
    event: str


@dataclass
class StrategyModel:
    strategy: str
    max_concurrency: int = 1
    runs: dict[str, ModelRun] = field(default_factory=dict)
    queue: list[str] = field(default_factory=list)
    blocked_by: str | None = None
    events: list[RunEvent] = field(default_factory=list)
    # A run ended while its step ran keeps its slot until the executor confirms the step stopped
    # (``confirm_stop``). A system whose executors confirm on their own is modelled with True: the
    # model then frees the slot at once, and the system under test is awaited until it agrees.
    stops_confirm_at_once: bool = True
    stopping: list[str] = field(default_factory=list)

    @property
    def limit(self) -> int:
        return limit_for(self.strategy, self.max_concurrency)

    def running(self) -> list[str]:
        return [r.name for r in self.runs.values() if r.status == "running"]

    def with_status(self, *statuses: str) -> list[str]:
        return [r.name for r in self.runs.values() if r.status in statuses]

    def statuses(self) -> dict[str, str]:
        return {name: r.status for name, r in self.runs.items()}

    # ------------------------------------------------------------------ operations

    def trigger(self, name: str | None = None) -> str:
        """A new run arrives; returns its name."""
        name = name or f"r{len(self.runs)}"
        run = ModelRun(name, len(self.runs))
        self.runs[name] = run
        self.events.append(RunEvent(name, "created"))
        if self.strategy == "first_only" and (self.running() or self.queue):
            self._end(name, "skipped")
            return name
        if self.strategy == "last_only":
            for other in [*self.running(), *self.queue]:
                self._end(other, "stopped")
        elif self.strategy == "serial_latest_only":
            for other in list(self.queue):
                self._end(other, "stopped")
        run.status = "queued"
        self.queue.append(name)
        self._admit()
        return name

    def finish(self, name: str, ok: bool) -> None:
        """The running run's only step ended."""
        assert self.runs[name].status == "running", name
        self._end(name, "succeeded" if ok else "failed")
        self._admit()

    def time_out(self, name: str) -> None:
        """The running run's timeout fired."""
        assert self.runs[name].status == "running", name
        self._end(name, "timed_out")
        self._admit()

    def stop(self, name: str) -> bool:
        if self.runs[name].status not in ACTIVE:
            return False
        self._end(name, "stopped")
        self._admit()
        return True

    def confirm_stop(self, name: str) -> None:
        """The executor confirmed that the ended run's step stopped: its slot is free."""
        self.stopping.remove(name)
        self._admit()

    def restart(self, name: str) -> bool:
        run = self.runs[name]
        if run.status not in RESTARTABLE:
            return False
        run.restarts += 1
        run.status = "queued"
        self.events.append(RunEvent(name, "restart_requested"))
        self.queue.insert(0, name)
        self._admit()
        return True

    def unblock(self) -> bool:
        if self.blocked_by is None:
            return False
        self.events.append(RunEvent(self.blocked_by, "unblocked"))
        self.blocked_by = None
        self._admit()
        return True

    def change_strategy(self, strategy: str, max_concurrency: int) -> bool:
        """workflow.set_run_strategy: refused to first_only/last_only while several runs are active;
        applies to queued runs at once, never to running ones."""
        if strategy in ("first_only", "last_only") and len(self.with_status(*ACTIVE)) > 1:
            return False
        self.strategy, self.max_concurrency = strategy, max_concurrency
        if strategy == "serial_latest_only":
            for other in self.queue[:-1]:
                self._end(other, "stopped")
        if strategy != "strict_sequential":
            self.blocked_by = None
        self._admit()
        return True

    # ------------------------------------------------------------------ rules

    def _end(self, name: str, status: str) -> None:
        run = self.runs[name]
        was = run.status
        if was == "queued":
            self.queue.remove(name)
        run.status = status
        self.events.append(RunEvent(name, status))
        stopped_while_running = was == "running" and status in ("stopped", "timed_out")
        if stopped_while_running and not self.stops_confirm_at_once and name not in self.stopping:
            self.stopping.append(name)  # its step was still running (a run holds one slot at most)
        if status == "succeeded" and self.blocked_by == name:
            self.blocked_by = None
        if status in ("failed", "timed_out") and was == "running" and self.strategy == "strict_sequential":
            self.blocked_by = name

    def _admit(self) -> None:
        if self.strategy == "strict_sequential" and self.blocked_by is not None:
            if self.blocked_by in self.queue and len(self.running()) + len(self.stopping) < self.limit:
                self._start(self.blocked_by)  # only the restarted failed run, wherever it waits
            return
        while self.queue and len(self.running()) + len(self.stopping) < self.limit:
            self._start(self.queue[0])

    def _start(self, name: str) -> None:
        self.queue.remove(name)
        run = self.runs[name]
        run.status = "running"
        run.starts += 1
        self.events.append(RunEvent(name, "started"))


class InvariantViolation(AssertionError):
    pass


def check_history(
    events: Iterable[RunEvent],
    *,
    strategy: str,
    limit: int,
    triggers: int | None = None,
    changes: Sequence[tuple[int, str, int]] = (),
) -> dict[str, str]:
    """Replay run events in commit order and check the run-strategy invariants; returns the final
    status of every run.

    - never more runs running than the limit;
    - no run started twice (a second start needs a restart first, and the run must not be running);
    - first starts in trigger order (FIFO; last_only and first_only too, as they only drop older runs);
    - every trigger accounted for exactly once: created once, then queued/running or ended;
    - strict_sequential never starts a run other than the failed one after a failure until an
      operator unblocks or the restarted failed run succeeds.

    ``changes`` are run-strategy changes as (index of the first event under it, strategy, limit): a
    lower limit stops starts until enough runs ended, it never ends running ones.
    """
    pending = sorted(changes, key=lambda c: c[0])  # stable: changes at one index keep their order
    created: list[str] = []
    status: dict[str, str] = {}
    running: set[str] = set()
    restarts_left: dict[str, int] = {}
    first_started: list[str] = []
    jumped: set[str] = set()
    blocker: str | None = None
    for index, ev in enumerate(events):
        while pending and pending[0][0] <= index:
            _, strategy, limit = pending.pop(0)
            if strategy != "strict_sequential":
                blocker = None
        run, what = ev.run, ev.event
        if what == "created":
            if run in status:
                raise InvariantViolation(f"run {run} created twice")
            created.append(run)
            status[run] = "queued"
            restarts_left[run] = 0
            continue
        if run not in status:
            raise InvariantViolation(f"event {what} for run {run} that was never created")
        if what == "started":
            if run in running:
                raise InvariantViolation(f"run {run} started while running")
            if status[run] != "queued":
                raise InvariantViolation(f"run {run} started while {status[run]}")
            if run in first_started:
                if restarts_left[run] <= 0:
                    raise InvariantViolation(f"run {run} started twice without a restart")
                restarts_left[run] -= 1
            if strategy == "strict_sequential" and blocker is not None and run != blocker:
                raise InvariantViolation(f"run {run} started past failed run {blocker} without an operator")
            running.add(run)
            if len(running) > limit:
                raise InvariantViolation(f"{len(running)} runs running, limit {limit}: {sorted(running)}")
            if run not in first_started:
                older = created[: created.index(run)]
                waiting = [r for r in older if status[r] == "queued" and r not in first_started]
                if run not in jumped and waiting:
                    raise InvariantViolation(
                        f"run {run} started before the older queued run {waiting[0]} (FIFO)"
                    )
                first_started.append(run)
            status[run] = "running"
        elif what == "restart_requested":
            if run not in first_started:
                jumped.add(run)  # a restarted run goes to the front of the queue: exempt from FIFO
            restarts_left[run] += 1
            status[run] = "queued"
        elif what == "unblocked":
            blocker = None
        elif what in ENDED:
            if status[run] in ENDED:
                raise InvariantViolation(f"run {run} ended twice ({status[run]}, then {what})")
            was_running = run in running
            running.discard(run)
            status[run] = what
            if what == "succeeded" and blocker == run:
                blocker = None
            if strategy == "strict_sequential" and what in ("failed", "timed_out") and was_running:
                blocker = run
    if triggers is not None and len(created) != triggers:
        raise InvariantViolation(f"{triggers} triggers but {len(created)} runs recorded")
    return status
