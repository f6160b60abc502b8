"""The per-step guard: the first process of every step, so the step's whole tree dies with its executor.

Run as ``python -I -S stepguard.py <executor pid> [--lease <path>] -- <argv...>`` by
``process.run_in_process_group``;
it imports nothing from Legato (and no site packages) so it starts in milliseconds. It

1. asks the kernel for a parent-death signal (``PR_SET_PDEATHSIG``) and checks its parent is still the
   executor (it may have died between fork and that call);
2. becomes a child subreaper (``PR_SET_CHILD_SUBREAPER``), so a step's grandchildren that are orphaned,
   even ones that left the process group with ``setsid``, are re-parented here and not to init;
3. starts the step command in its own process group (with a parent-death SIGKILL of its own, in case
   the guard itself is killed) and relays its exit status, signals included;
4. when the executor dies (``kill -9``, OOM): SIGKILLs every descendant and the group at once. When
   the step command ends: SIGKILLs the descendants that escaped the group, then exits like it;
5. with ``--lease``: reads the executor's fence lease (``lease.py``: ``<last contact> <deadline>`` on
   CLOCK_MONOTONIC) before starting the command and every ``LEASE_POLL`` seconds while it runs. Once the
   deadline has passed, or the lease cannot be read, the executor is frozen or cut off from NATS and
   the scheduler may soon declare it dead and retry the attempt elsewhere: the guard SIGKILLs every
   descendant (or never starts the command), writes ``fenced.<its pid>`` beside the lease saying for
   how long the executor had been out of contact, and exits with ``FENCED_EXIT``. It needs nothing
   from the executor to do so, so a SIGSTOPped executor's steps stop on time too.

The executor's own stopping (SIGTERM to the group, then SIGKILL) is unchanged: the guard ignores
SIGTERM/SIGINT/SIGHUP itself and just waits for the command to end.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PARENT_DIED = signal.SIGUSR1
REAP_ROUNDS = 100
# Keep in step with legato.protocol.liveness.STEP_GUARD_POLL (this file imports nothing from Legato).
LEASE_POLL = 0.2
FENCED_EXIT = 125

_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, value: int) -> None:
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def descendants(root: int) -> list[int]:
    """Every live process below ``root``, read from /proc (children before their own children)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
            ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def kill_descendants() -> None:
    """SIGKILL every process below this one."""
    # Twice: a process may fork between the scan and the kill; its child is found the second time.
    for _ in range(2):
        for pid in descendants(os.getpid()):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def die_with_parent() -> None:
    """End the step with its guard: kill its processes, then the guard's own group."""
    kill_descendants()
    try:
        if os.getpgrp() == os.getpid():  # never the group of whoever started a guard by hand
            os.killpg(os.getpgrp(), signal.SIGKILL)  # the group, this guard included
    finally:
        os._exit(137)


def lease_silence(lease: str) -> float | None:
    """Seconds since the executor's last confirmed contact once its lease has expired, else None."""
    now = time.monotonic()
    try:
        with open(lease, "rb") as f:
            contact_at, deadline = (float(x) for x in f.read(128).split()[:2])
    except (OSError, ValueError):
        return float("inf")  # unreadable: the executor cannot prove it is alive and connected
    return now - contact_at if now >= deadline else None


def fence(lease: str, silent: float) -> None:
    """The lease expired: kill the step's whole tree, leave a mark for the executor, exit."""
    kill_descendants()
    what = "no readable lease" if silent == float("inf") else f"{silent:.1f} s"
    try:
        mark = os.path.join(os.path.dirname(lease), f"fenced.{os.getpid()}")
        with open(mark, "w") as f:
            f.write(f"executor lost contact with NATS for {what}\n")
    except OSError:
        pass
    for _ in range(REAP_ROUNDS):
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                kill_descendants()
                time.sleep(0.01)
        except ChildProcessError:
            break
    os._exit(FENCED_EXIT)


def parse(argv: list[str]) -> tuple[int, str | None, list[str]] | None:
    """``(executor pid, lease path, command)`` from the guard's argv; None when malformed."""
    if len(argv) >= 4 and argv[2] == "--":
        return int(argv[1]), None, argv[3:]
    if len(argv) >= 6 and argv[2] == "--lease" and argv[4] == "--":
        return int(argv[1]), argv[3], argv[5:]
    return None


def main(argv: list[str]) -> int:
    """Run the command under the guard until it ends, or until the executor dies or loses its lease."""
    parsed = parse(argv)
    if parsed is None:
        sys.stderr.write("usage: stepguard.py <executor pid> [--lease <path>] -- <command> [args...]\n")
        return 2
    executor, lease, command = parsed

    def on_parent_signal(signum: int, frame: object) -> None:
        if os.getppid() != executor:
            die_with_parent()

    signal.signal(PARENT_DIED, on_parent_signal)
    for stop in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        # The command gets these from the group; the guard outlives it to relay its status.
        signal.signal(stop, lambda signum, frame: None)
    _prctl(PR_SET_PDEATHSIG, PARENT_DIED)
    if os.getppid() != executor:
        die_with_parent()
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    if lease is not None:
        silent = lease_silence(lease)
        if silent is not None:
            fence(lease, silent)  # never start a step for an executor that may already be written off

    pid = os.fork()
    if pid == 0:
        try:
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            os.execvp(command[0], command)
        except BaseException as exc:
            os.write(2, f"cannot start {command[0]}: {exc}\n".encode(errors="replace"))
        os._exit(127)

    status = 0
    while True:
        try:
            done, status = os.waitpid(-1, 0 if lease is None else os.WNOHANG)
        except ChildProcessError:
            break
        if done == pid:
            break
        if done == 0 and lease is not None:  # the command still runs: is the executor still connected?
            silent = lease_silence(lease)
            if silent is not None:
                fence(lease, silent)
            time.sleep(LEASE_POLL)
    # The command is gone: nothing it started may outlive it, in the group or out of it.
    kill_descendants()
    for _ in range(REAP_ROUNDS):
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        return 128 + sig
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
