"""Signals held back while the scheduler is behind: the router's side of load shedding.

The API refuses a start with ``overloaded`` while the scheduler has ``LEGATO_API_MAX_BACKLOG`` messages
or more to apply on the workflow's partition. Signals have no caller to refuse: a storm the stack
cannot absorb would make the router fire runs into the trigger stream faster than the scheduler
applies them, and that stream has no bound of its own (it grows until JetStream's storage is full,
and then nothing can be published, results included).

So before a signal is applied, ``FireGate.admit`` looks up the partitions of the workflows whose
signal triggers listen to its name (the router's trigger table) and waits while any of them is at
``LEGATO_ROUTER_MAX_BACKLOG`` or over. A partition's figure is what ``bus/backlog.py``'s probe last
read, plus the signals for it this router let through since (being applied, or applied after that
read): so the router does not overshoot the limit by the signals it applied while the figure was
being read again (with the probe's figure alone, two waves of the consumer's in-flight signals, 2,048,
passed a limit of 20). A signal counted that fires nothing only makes the gate close early, until the
next read. While the probe cannot read (every read failing for ten intervals), only its last figure
counts, as for the API, so counts that no read clears never close the gate for good, for signals
already held too. Held signals wake once per read (failed or not), not each on a timer.

A held signal is not applied, acked or lost: its handler holds it (kept alive like any long handler),
and once every in-flight slot of the router's consumer holds one, the consumer stops fetching and the
rest wait in the signal stream, which is bounded (publishers get JetStream's "maximum bytes" error
when it is full). Signals for workflows on other partitions go on until held signals fill those
slots. On shutdown a held signal is given back (``Retry``) for the next router. How a signal is
applied did not change: a held signal is applied later exactly as it would have been at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from legato.bus.backlog import BacklogProbe
from legato.bus.consumer import Delivery, Retry
from legato.bus.topology import Topology, partition_of
from legato.signal_router.matching import TriggerTable
from legato.telemetry import get_logger

log = get_logger("legato.signal_router")


class FireGate:
    """Holds a signal back while a partition it would start a run on is at the backlog limit."""

    def __init__(
        self, probe: BacklogProbe, limit: int, topology: Topology, table: Callable[[], TriggerTable]
    ) -> None:
        """``table``: the router's current trigger table (read, never loaded, here)."""
        self.probe = probe
        self.limit = limit
        self.topology = topology
        self.table = table
        self.held = 0  # signals waiting here now
        self.held_total = 0  # signals ever held (for tests and the log)
        self._applying: Counter[int] = Counter()  # let through, not yet applied
        self._applied: Counter[int] = Counter()  # applied since the probe's last read
        self._reads = -1
        self._table: TriggerTable | None = None
        self._partitions: dict[str, set[int]] = {}

    def partitions(self, name: str) -> set[int]:
        """The partitions a signal called ``name`` may start runs on (kept per trigger table, for the
        names it listens to only: signal names come from outside)."""
        table = self.table()
        if table is not self._table:
            self._table, self._partitions = table, {}
        found = self._partitions.get(name)
        if found is None:
            triggers = table.by_name.get(name)
            if not triggers:
                return set()
            found = {partition_of(t.workflow_id, self.probe.partitions) for t in triggers}
            self._partitions[name] = found
        return found

    def over(self, partitions: set[int]) -> tuple[int, int] | None:
        """A partition at the limit or over, and its figure; or None. While the probe has no figure
        (no read yet, or every read failing for ten intervals) only its last figure counts, as for the
        API: signals counted since a read that never comes would close the gate for good."""
        if self._reads != self.probe.reads:
            self._reads = self.probe.reads
            self._applied.clear()
        counted = not self.probe.stale()
        for p in partitions:
            waiting = self.probe.of(p)
            if counted:
                waiting += self._applying[p] + self._applied[p]
            if waiting >= self.limit:
                return p, waiting
        return None

    @asynccontextmanager
    async def admit(self, d: Delivery[bytes]) -> AsyncIterator[None]:
        """Enter once ``d`` may be applied (apply it inside); raises ``Retry`` if the router stops
        while the signal is held."""
        partitions: set[int] = set()
        if d.subject != self.topology.signal_wait_subject:  # a step's wait starts no run
            partitions = self.partitions(self.topology.signal_name(d.subject))
        if partitions:
            await self._wait(partitions)
        self._applying.update(partitions)
        try:
            yield
        finally:
            self._applying.subtract(partitions)
        self._applied.update(partitions)

    async def _wait(self, partitions: set[int]) -> None:
        blocked = self.over(partitions)
        if blocked is None:
            return
        self.held += 1
        self.held_total += 1
        if self.held == 1:
            log.warning(
                "signals_held_back",
                partition=blocked[0],
                backlog=blocked[1],
                limit=self.limit,
                hint="the scheduler is behind on this partition (LEGATO_ROUTER_MAX_BACKLOG)",
            )
        try:
            while blocked is not None:
                # Only a read can open the gate (a signal applied meanwhile moves from being applied
                # to applied, the same count), or reads failing long enough that only the last figure
                # counts: one wake-up per read, failed or not, for all the held signals.
                await self.probe.next_read()
                if self.probe.stopping:
                    raise Retry(delay=0.0, reason="signal router stopping while the signal was held back")
                blocked = self.over(partitions)
        finally:
            self.held -= 1
            if self.held == 0:
                log.info("signals_released", held_total=self.held_total)
