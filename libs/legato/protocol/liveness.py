"""Executor liveness timings shared by the executor and the scheduler: one place, one inequality.

The scheduler settles an attempt as lost (and its platform retry may start elsewhere) once the
executor running it has sent no heartbeat for ``EXECUTOR_DEAD_AFTER`` seconds. The executor must have
killed that attempt's processes strictly before then, or two copies of a step body could overlap. It
does so without needing its own event loop: it keeps a lease file whose deadline is its last
confirmed contact with NATS plus ``EXECUTOR_FENCE_AFTER``, and every step's guard process SIGKILLs the
step's tree once the deadline has passed (``legato.executor.stepguard``), so a frozen (SIGSTOP, blocked
loop) or cut-off executor fences its steps by itself. (podman's container monitor, which runs no step
code, is spared for up to the guard's ``MONITOR_GRACE`` to record its killed container's end; only an
installed, root-owned ``conmon``: a step's copy under that name dies at once.)

Worst case, measured from the last heartbeat the scheduler received (H):

- the executor's last confirmed contact C is at most one heartbeat interval after H (while contact
  holds, a heartbeat goes out every ``EXECUTOR_HEARTBEAT_INTERVAL``), and its lease ends at
  C + ``EXECUTOR_FENCE_AFTER``;
- the guard notices within ``STEP_GUARD_POLL`` and its SIGKILL takes effect within ``FENCE_KILL_TIME``;
- the scheduler declares the executor dead no earlier than H + ``EXECUTOR_DEAD_AFTER`` (and the retry
  still has to be dispatched and fetched after that).

So ``EXECUTOR_FENCE_AFTER + EXECUTOR_HEARTBEAT_INTERVAL + STEP_GUARD_POLL + FENCE_KILL_TIME`` must stay
below ``EXECUTOR_DEAD_AFTER`` with ``FENCE_MARGIN`` to spare (asserted by a unit test).
"""

from __future__ import annotations

# Scheduler: an executor boot silent this long is dead; its attempts are reported lost.
EXECUTOR_DEAD_AFTER = 5.0
# Executor: one ExecutorHeartbeat this often.
EXECUTOR_HEARTBEAT_INTERVAL = 1.0
# Executor: one core-NATS round trip through the server this often proves contact (``NatsContact``).
CONTACT_PROBE_INTERVAL = 0.5
# Executor: running steps are killed this long after the last confirmed contact with NATS.
EXECUTOR_FENCE_AFTER = 3.0
# Step guard: how often it reads the lease while its command runs.
STEP_GUARD_POLL = 0.2
# Upper bound for SIGKILL of a step's tree to take effect (a /proc scan and a kill per process).
FENCE_KILL_TIME = 0.3
# What must be left between the executor's fence and the scheduler's verdict.
FENCE_MARGIN = 0.25


def fence_slack() -> float:
    """Seconds between the latest moment a silent executor's steps are dead and its death verdict."""
    return EXECUTOR_DEAD_AFTER - (
        EXECUTOR_FENCE_AFTER + EXECUTOR_HEARTBEAT_INTERVAL + STEP_GUARD_POLL + FENCE_KILL_TIME
    )
