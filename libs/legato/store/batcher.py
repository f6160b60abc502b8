"""Group commit: callers submit items and wait; a worker drains what is queued into a batch, applies
the batch in one transaction, and only then resolves each caller's future.

bounded queue -> batch -> one transaction -> resolve futures -> isolate failures one by one

- The queue is bounded: ``submit`` waits while it is full (backpressure, never unbounded growth).
- ``commit(items)`` runs the batch's transaction (and whatever must follow its commit) and returns one
  outcome per item, in order: a value resolves that item's future, an exception fails only it.
- If ``commit`` raises, ``batch_error(exc)`` may name an exception that fails the whole batch at once
  (a failure of this process, not of the items, e.g. a lost partition lease). Otherwise the batch is
  applied again one item at a time, so only the items that fail by themselves fail; a lone item that
  fails is given to ``rescue(item, exc)``, which may turn the failure into an outcome (e.g. store a
  poison signal as rejected) or return the exception.
- ``close()`` stops taking items; the workers commit what is queued and return. A cancelled worker
  fails the items still queued with ``closed_error()`` and re-raises.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import asyncpg
import msgspec

from legato.telemetry import get_logger

log = get_logger("legato.store")

T = TypeVar("T")
R = TypeVar("R")

# How often an idle worker looks at ``close()`` when it has no idle timeout of its own.
POLL_SECONDS = 0.5


class BatcherClosed(RuntimeError):
    """The batcher was closed: the item was not applied."""


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class GroupCommit(Generic[T, R]):
    """Applies submitted items in batches of one transaction each (see the module docstring)."""

    def __init__(
        self,
        commit: Callable[[list[T]], Awaitable[Sequence[R | Exception]]],
        *,
        name: str,
        batch: int = 256,
        queue_size: int = 4096,
        batch_error: Callable[[Exception], Exception | None] | None = None,
        rescue: Callable[[T, Exception], Awaitable[R | Exception]] | None = None,
        closed_error: Callable[[], Exception] = lambda: BatcherClosed("closed"),
    ) -> None:
        self.commit = commit
        self.name = name
        self.batch = max(1, batch)
        self.batch_error = batch_error
        self.rescue = rescue
        self.closed_error = closed_error
        self._queue: asyncio.Queue[_Pending[T, R]] = asyncio.Queue(maxsize=queue_size)
        self._closed = False
        self.batches = 0  # committed batches

    @property
    def closed(self) -> bool:
        return self._closed

    def qsize(self) -> int:
        return self._queue.qsize()

    def queued(self) -> list[T]:
        """The items waiting for a later batch, oldest first (a snapshot)."""
        return [p.item for p in self._queue._queue]  # type: ignore[attr-defined]

    async def submit(self, item: T) -> R:
        """Queue ``item`` (waiting while the queue is full) and wait until its batch committed."""
        if self._closed:
            raise self.closed_error()
        pending: _Pending[T, R] = _Pending(item)
        await self._queue.put(pending)
        return await pending.future

    def close(self) -> None:
        """Take no more items; the workers commit what is queued, then return."""
        self._closed = True

    def fail_pending(self, exc: Exception) -> None:
        """Fail every queued item with ``exc`` (its batcher will not apply it)."""
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(exc)

    async def run(self, *, workers: int = 1, idle_timeout: float | None = None) -> None:
        """Apply batches until closed and drained, or (one worker) until idle for ``idle_timeout``."""
        try:
            if workers == 1:
                await self._work(idle_timeout)
                return
            async with asyncio.TaskGroup() as tg:
                for i in range(workers):
                    tg.create_task(self._work(idle_timeout), name=f"{self.name}-{i}")
        except asyncio.CancelledError:
            self._closed = True
            self.fail_pending(self.closed_error())
            raise

    async def _work(self, idle_timeout: float | None) -> None:
        wait = POLL_SECONDS if idle_timeout is None else idle_timeout
        while True:
            if self._queue.empty():
                if self._closed:
                    return
                try:
                    async with asyncio.timeout(wait):
                        first = await self._queue.get()
                except TimeoutError:
                    if idle_timeout is not None and self._queue.empty():
                        return  # idle: the owner may passivate
                    continue
            else:
                first = self._queue.get_nowait()
            batch = [first]
            while len(batch) < self.batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._apply(batch)

    async def _apply(self, batch: list[_Pending[T, R]]) -> None:
        try:
            outcomes = await self.commit([p.item for p in batch])
        except asyncio.CancelledError:
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(self.closed_error())
            raise
        except Exception as exc:
            await self._failed(batch, exc)
            return
        self.batches += 1
        for p, outcome in zip(batch, outcomes, strict=True):
            _resolve(p, outcome)

    async def _failed(self, batch: list[_Pending[T, R]], exc: Exception) -> None:
        whole = self.batch_error(exc) if self.batch_error is not None else None
        if whole is not None:
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(whole)
            return
        if len(batch) == 1:
            p = batch[0]
            outcome: R | Exception = exc
            if self.rescue is not None:
                outcome = await self.rescue(p.item, exc)
            if isinstance(outcome, Exception):
                log.warning("batch_item_failed", batcher=self.name, error=repr(outcome))
            _resolve(p, outcome)
            return
        log.warning("batch_failed", batcher=self.name, size=len(batch), error=repr(exc))
        for p in batch:  # one at a time: only the items that cannot be applied fail
            await self._apply([p])


def content_error(exc: BaseException) -> bool:
    """An error about the items' content (retrying cannot help, applying them one by one finds the bad
    one), not about the connection or the database being unavailable."""
    if isinstance(exc, asyncpg.PostgresError):
        return isinstance(exc, asyncpg.DataError | asyncpg.ProgramLimitExceededError)
    return isinstance(exc, ValueError | TypeError | RecursionError | UnicodeError | msgspec.MsgspecError)


def fail_whole_batch_unless_content_error(exc: Exception) -> Exception | None:
    """A ``batch_error`` that isolates only content errors: when Postgres is unreachable or hangs, the
    batch fails at once instead of waiting out the same outage once per item."""
    return None if content_error(exc) else exc


def _resolve(pending: _Pending[T, R], outcome: R | Exception) -> None:
    if pending.future.done():
        return
    if isinstance(outcome, Exception):
        pending.future.set_exception(outcome)
    else:
        pending.future.set_result(outcome)
