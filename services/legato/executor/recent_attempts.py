"""Bounded memory of recent attempts: results this process published, and cancels it was told about."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class RecentResults:
    """LRU of encoded results by attempt id, bounded by count and by bytes.

    Lets a redelivered work item (its ack or result publish failed) get the same result again instead
    of being run twice or reported as lost.
    """

    def __init__(self, max_entries: int = 4096, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_entries = max(1, max_entries)
        self.max_bytes = max(1, max_bytes)
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, attempt_id: str) -> bytes | None:
        payload = self._items.get(attempt_id)
        if payload is not None:
            self._items.move_to_end(attempt_id)
        return payload

    def put(self, attempt_id: str, payload: bytes) -> None:
        old = self._items.pop(attempt_id, None)
        if old is not None:
            self._bytes -= len(old)
        self._items[attempt_id] = payload
        self._bytes += len(payload)
        while len(self._items) > self.max_entries or (self._bytes > self.max_bytes and len(self._items) > 1):
            _, evicted = self._items.popitem(last=False)
            self._bytes -= len(evicted)


class RecentCancels:
    """Attempt ids whose cancel arrived recently, with the reason; bounded by count and age.

    A cancel may overtake its work item (or reach every replica while one runs it), so it is kept for
    a while and honoured when the item shows up.
    """

    def __init__(
        self,
        max_entries: int = 10_000,
        max_age: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max(1, max_entries)
        self.max_age = max_age
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, attempt_id: str, reason: str) -> None:
        self._items.pop(attempt_id, None)
        self._items[attempt_id] = (self._clock(), reason)
        self._expire()

    def reason_for(self, attempt_id: str) -> str | None:
        """The cancel reason if ``attempt_id`` was cancelled recently, else None."""
        self._expire()
        entry = self._items.get(attempt_id)
        return None if entry is None else entry[1]

    def _expire(self) -> None:
        horizon = self._clock() - self.max_age
        while self._items:
            oldest_id, (at, _) = next(iter(self._items.items()))
            if at >= horizon and len(self._items) <= self.max_entries:
                break
            del self._items[oldest_id]
