"""The executor's fence lease: a small file holding until when its steps may run.

One line, ``<last contact> <deadline>``, both in seconds on CLOCK_MONOTONIC (``time.monotonic()`` on
Linux: system-wide, so every step guard can compare it with its own clock). The executor rewrites it
(a temporary file renamed over it: a reader sees the old record or the new one, never half of one)
each time JetStream answers (``NatsContact``). Each step's guard (``stepguard.py``) reads it a few times
a second and SIGKILLs the step's tree once the deadline has passed or the file cannot be read, so an
executor that is frozen (SIGSTOP, a blocked event loop) or cut off from NATS stops its steps before the
scheduler may declare it dead (``legato.protocol.liveness``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from legato.protocol.liveness import EXECUTOR_FENCE_AFTER

LEASE_NAME = "fence.lease"
# Written by a guard that fenced its step, named after the guard's pid: how the executor tells a
# fenced step from one that exited with the same status.
FENCED_MARK = "fenced.{pid}"


class FenceLease:
    """The lease file of one executor process, in a private folder removed by ``close()``."""

    def __init__(self, fence_after: float = EXECUTOR_FENCE_AFTER, *, directory: Path | None = None) -> None:
        self.fence_after = fence_after
        self.dir = Path(tempfile.mkdtemp(prefix="legato-executor-", dir=directory))
        self.path = self.dir / LEASE_NAME
        self._tmp = self.dir / f".{LEASE_NAME}.tmp"

    def renew(self, contact_at: float) -> None:
        """NATS answered a request sent at ``contact_at`` (monotonic): steps may run until + fence_after."""
        self._tmp.write_text(f"{contact_at:.6f} {contact_at + self.fence_after:.6f}\n")
        os.replace(self._tmp, self.path)

    def fenced_mark(self, guard_pid: int) -> str | None:
        """What the guard with this pid wrote if it fenced its step (the mark is consumed), else None."""
        mark = self.dir / FENCED_MARK.format(pid=guard_pid)
        try:
            text = mark.read_text(errors="replace").strip()
        except OSError:
            return None
        mark.unlink(missing_ok=True)
        return text or "fenced"

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
