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
   the step command ends: SIGKILLs the descendants that escaped the group, then exits like it. The one
   exception, on every kill: podman's container monitor (``conmon``, re-parented here when ``podman
   run`` daemonizes it) and the cleanup it starts are given up to ``MONITOR_GRACE`` to record the end
   of the container whose processes were just killed and remove it (``--rm``), then killed if still
   there (``kill_descendants``, ``settle``): killed with its container it records nothing, and podman
   lists the container as running for good, its storage still mounted;
5. with ``--lease``: reads the executor's fence lease (``lease.py``: ``<last contact> <deadline>`` on
   CLOCK_MONOTONIC) before starting the command and every ``LEASE_POLL`` seconds while it runs (woken
   at once when the command ends: ``wait_exit``). Once the deadline has passed, or the lease cannot be
   read, the executor is frozen or cut off from NATS and the scheduler may soon declare it dead and
   retry the attempt elsewhere: the guard SIGKILLs every
   descendant (or never starts the command), writes ``fenced.<its pid>`` beside the lease saying for
   how long the executor had been out of contact, and exits with ``FENCED_EXIT``. It needs nothing
   from the executor to do so, so a SIGSTOPped executor's steps stop on time too.

The executor's own stopping (SIGTERM to the group, then SIGKILL) is unchanged: the guard ignores
SIGTERM/SIGINT/SIGHUP itself and just waits for the command to end.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PARENT_DIED = signal.SIGUSR1
REAP_ROUNDS = 100
# podman's container monitor, and the command it runs once its container has ended (``podman container
# cleanup``, which removes a ``--rm`` container): spared by the guard's kills for up to MONITOR_GRACE
# seconds. Only root's installed executables in the guard's own mount namespace qualify: never a
# container's own process, nor a step's copy.
MONITOR = "conmon"
MONITOR_CLEANUP = "podman"
MONITOR_GRACE = 2.0
MONITOR_POLL = 0.01
# Keep in step with legato.protocol.liveness.STEP_GUARD_POLL (this file imports nothing from Legato).
LEASE_POLL = 0.2
FENCED_EXIT = 125

_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, value: int) -> None:
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def descendants(root: int) -> list[tuple[int, int]]:
    """Every live process below ``root`` with its parent, read from /proc (parents before their children)."""
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
    found: list[tuple[int, int]] = []
    todo = [root]
    while todo:
        parent = todo.pop()
        for child in children.get(parent, ()):
            found.append((child, parent))
            todo.append(child)
    return found


def _exe_name(pid: int) -> str:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return ""  # ended (a zombie), or not readable


def _mount_ns(pid: int | str) -> int:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return -1


def _installed(pid: int) -> bool:
    """The process runs a file owned by root that no one else may write: installed, not one a step that
    runs as another user could have made (or changed) to pass for the monitor and outlive a fence."""
    try:
        st = os.stat(f"/proc/{pid}/exe")
    except OSError:
        return False
    return st.st_uid == 0 and not st.st_mode & 0o022


def _is_monitor(pid: int, parent: int, spared: set[int], known: set[int] | frozenset[int]) -> bool:
    """A container monitor, or the cleanup a monitor started (``known``: spared by an earlier scan, for a
    cleanup outliving its monitor), installed (``_installed``) and run from the guard's own mount
    namespace."""
    name = _exe_name(pid)
    if name == MONITOR or (name == MONITOR_CLEANUP and (parent in spared or pid in known)):
        return _mount_ns(pid) == _mount_ns("self") and _installed(pid)
    return False


def kill_descendants(spare_monitors: bool = True, known: set[int] | frozenset[int] = frozenset()) -> set[int]:
    """SIGKILL every process below this one, except (``spare_monitors``) container monitors and their
    cleanup (``_is_monitor``); returns the processes spared."""
    spared: set[int] = set()
    # Twice: a process may fork between the scan and the kill; its child is found the second time.
    for _ in range(2):
        spared = set()
        for pid, parent in descendants(os.getpid()):
            if spare_monitors and _is_monitor(pid, parent, spared, known):
                spared.add(pid)
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    return spared


def reap() -> None:
    """Collect the children (orphans re-parented here included) that have ended, at most REAP_ROUNDS."""
    for _ in range(REAP_ROUNDS):
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def settle(spared: set[int]) -> None:
    """Give the monitors ``kill_descendants`` spared up to ``MONITOR_GRACE`` seconds to record their
    container's end and exit, killing anything else that appears below this process meanwhile; then
    kill what is left of them. Nothing is waited for when nothing was spared."""
    deadline = time.monotonic() + MONITOR_GRACE
    while spared and time.monotonic() < deadline:
        time.sleep(MONITOR_POLL)
        reap()
        spared = kill_descendants(known=spared)
    if spared:
        kill_descendants(spare_monitors=False)


def die_with_parent() -> None:
    """End the step with its guard: kill its processes, then the guard's own group."""
    try:
        settle(kill_descendants())
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
    spared = kill_descendants()
    what = "no readable lease" if silent == float("inf") else f"{silent:.1f} s"
    try:
        mark = os.path.join(os.path.dirname(lease), f"fenced.{os.getpid()}")
        with open(mark, "w") as f:
            f.write(f"executor lost contact with NATS for {what}\n")
    except OSError:
        pass
    settle(spared)
    for _ in range(REAP_ROUNDS):
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                kill_descendants(spare_monitors=False)
                time.sleep(0.01)
        except ChildProcessError:
            break
    os._exit(FENCED_EXIT)


def exit_fd(pid: int) -> int | None:
    """A descriptor that becomes readable once child ``pid`` has ended (a pidfd), or None where the
    kernel has none (before Linux 5.3)."""
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def wait_exit(ended: int | None, timeout: float) -> None:
    """Sleep ``timeout`` seconds between two lease reads, or less: wake as soon as the command ends (a
    step's end is noticed at once, not at the next read)."""
    if ended is None:
        time.sleep(timeout)
    else:
        select.select([ended], [], [], timeout)


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

    ended = exit_fd(pid) if lease is not None else None
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
            wait_exit(ended, LEASE_POLL)
    # The command is gone: nothing it started may outlive it, in the group or out of it.
    settle(kill_descendants())
    reap()
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        return 128 + sig
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
