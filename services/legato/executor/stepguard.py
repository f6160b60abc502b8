"""The per-step guard: the first process of every step, so the step's whole tree dies with its executor.

Run as ``python -I -S stepguard.py <executor pid> -- <argv...>`` by ``process.run_in_process_group``;
it imports nothing from Legato (and no site packages) so it starts in milliseconds. It

1. asks the kernel for a parent-death signal (``PR_SET_PDEATHSIG``) and checks its parent is still the
   executor (it may have died between fork and that call);
2. becomes a child subreaper (``PR_SET_CHILD_SUBREAPER``), so a step's grandchildren that are orphaned,
   even ones that left the process group with ``setsid``, are re-parented here and not to init;
3. starts the step command in its own process group (with a parent-death SIGKILL of its own, in case
   the guard itself is killed) and relays its exit status, signals included;
4. when the executor dies (``kill -9``, OOM): SIGKILLs every descendant and the group at once. When
   the step command ends: SIGKILLs the descendants that escaped the group, then exits like it.

The executor's own stopping (SIGTERM to the group, then SIGKILL) is unchanged: the guard ignores
SIGTERM/SIGINT/SIGHUP itself and just waits for the command to end.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PARENT_DIED = signal.SIGUSR1
REAP_ROUNDS = 100

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
    # Twice: a process may fork between the scan and the kill; its child is found the second time.
    for _ in range(2):
        for pid in descendants(os.getpid()):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def die_with_parent() -> None:
    kill_descendants()
    try:
        if os.getpgrp() == os.getpid():  # never the group of whoever started a guard by hand
            os.killpg(os.getpgrp(), signal.SIGKILL)  # the group, this guard included
    finally:
        os._exit(137)


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        sys.stderr.write("usage: stepguard.py <executor pid> -- <command> [args...]\n")
        return 2
    executor = int(argv[1])
    command = argv[3:]

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
            done, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if done == pid:
            break
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
