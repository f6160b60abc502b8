"""Bounded capture of what a step's processes print: only the tail of each stream is kept."""

from __future__ import annotations

from collections.abc import Callable

STREAM_TAIL = 64 * 1024  # bytes kept of each of stdout and stderr
LOG_TAIL = 8 * 1024  # bytes of interleaved stdout+stderr reported as the attempt's log tail


class TailBuffer:
    """Keeps the last ``limit`` bytes written to it and counts everything."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self._buf = bytearray()

    def write(self, data: bytes) -> None:
        self.total += len(data)
        if len(data) >= self.limit:
            self._buf = bytearray(data[-self.limit :])
            return
        self._buf += data
        excess = len(self._buf) - self.limit
        if excess > 0:
            del self._buf[:excess]

    @property
    def truncated(self) -> bool:
        return self.total > len(self._buf)

    def text(self, limit: int | None = None) -> str:
        """The kept tail (or its last ``limit`` bytes) as text; a split UTF-8 sequence becomes U+FFFD."""
        data = bytes(self._buf if limit is None else self._buf[-limit:])
        return data.decode("utf-8", errors="replace")


class CapturedOutput:
    """stdout and stderr tails, plus the two interleaved in arrival order for the log tail."""

    def __init__(self, stream_tail: int = STREAM_TAIL, log_tail: int = LOG_TAIL) -> None:
        self.stdout = TailBuffer(stream_tail)
        self.stderr = TailBuffer(stream_tail)
        self.combined = TailBuffer(log_tail)
        # Set by a runner whose step holds secrets: (text, cut off at its start?) -> masked text.
        self.redact: Callable[[str, bool], str] | None = None

    def _redacted(self, text: str, cut: bool) -> str:
        return text if self.redact is None else self.redact(text, cut)

    def log_tail(self) -> str | None:
        if self.combined.total == 0:
            return None
        return self._redacted(self.combined.text(), self.combined.truncated)

    def stderr_tail(self, limit: int = 2048) -> str:
        return self._redacted(self.stderr.text(limit), self.stderr.total > limit).strip()
