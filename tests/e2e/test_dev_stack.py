"""`legato dev` as a newcomer runs it, from a fresh 0700 folder: every example loaded (recursively), a
`legato` command that works printed, children that die with it on kill -9, a stale stack cleaned up by
the next start, and no permission changed outside .legato/."""

from __future__ import annotations

import json
import os
import queue
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from legato.devstack import EmbeddedNats
from tests.support.processes import process_gone
from tests.web.support import http, session_cookie

REPO = Path(__file__).resolve().parents[2]

# One worker at a time: these share legato dev's machine-wide Postgres cache (make test runs two workers).
pytestmark = pytest.mark.xdist_group("dev")


def modes(path: Path) -> dict[str, int]:
    return {str(p): stat.S_IMODE(p.stat().st_mode) for p in [path, *path.parents]}


class Dev:
    """`legato dev` as a subprocess whose output is read line by line."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "legato.cli.main",
                "dev",
                "--no-demo",
                "--examples",
                str(REPO / "examples"),
            ],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float = 240.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"no {text!r} from legato dev:\n{''.join(self.seen)}")

    def output(self) -> str:
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return "".join(self.seen)


@pytest.fixture
def closed_dir() -> Iterator[Path]:
    """A fresh folder only its owner can traverse (like a clone in root's home)."""
    path = Path(tempfile.mkdtemp(prefix="legato-0700-"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    yield path
    import shutil

    pg = path / ".legato" / "pg"
    if pg.is_symlink():
        shutil.rmtree(pg.resolve(), ignore_errors=True)
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_dev_from_a_closed_folder_kill9_takes_children_and_next_start_cleans_up(closed_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEGATO_")}
    env["PATH"] = "/usr/bin:/bin"  # `legato` is not on it, as after `make run` in a fresh shell
    state = closed_dir / ".legato"
    before = modes(closed_dir)
    dev = Dev(closed_dir, env)
    try:
        ready = dev.wait_for("ready")
        time.sleep(1.0)
        out = dev.output()
        # Every example, the strategies folder included.
        for name in ("hello.yaml", "strategies/sequential-demo.yaml", "strategies/strict-demo.yaml"):
            assert f"loaded {name}:" in out, out
        # A workflow written in Python (legato.flow); its helper module without a `flow` is skipped.
        assert "loaded code/daily_sales.py: daily-sales v1" in out, out
        assert "sales_steps" not in out, out
        # The command it suggests works from this shell (PATH without the venv).
        hint = next((line for line in out.splitlines() if "not on your PATH" in line), "")
        exe = str(Path(sys.executable).parent / "legato")
        assert exe in ready and exe in hint, ready + hint
        listed = subprocess.run(
            [exe, "workflow", "list"], cwd=closed_dir, env=env, capture_output=True, text=True, timeout=60
        )
        assert listed.returncode == 0, listed.stderr
        assert "sequential-demo" in listed.stdout
        # A run's status changes are printed (from its lifecycle events), its end included.
        started = subprocess.run(
            [exe, "start", "hello", "--wait"],
            cwd=closed_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert started.returncode == 0, started.stdout + started.stderr
        ended = dev.wait_for("  succeeded", timeout=60)
        assert "hello" in ended and ended.split()[2] in started.stdout, (ended, started.stdout)
        # No permission changed outside .legato/.
        assert modes(closed_dir) == before
        # legato dev restarts a child that exits (the console on another port if its own was taken
        # between the check and its bind): wait, briefly, for that to settle.
        deadline = time.monotonic() + 15
        while True:
            dev_state = json.loads((state / "dev.json").read_text())
            children = [int(p) for p in dev_state["children"]]
            dead = [p for p in children if process_gone(p)]
            if not dead or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        out = dev.output()
        # 2 servers, 4 services, the console; on failure, which one and what legato dev said of it.
        assert len(children) == 7 and not dead, f"children {children}, dead {dead}\n{dev.output()}"
        # The web console: a one-click login URL on the terminal and in dev.json, logging in as the admin.
        web_url = dev_state["web_url"]
        assert f"web console: {web_url}" in out
        deadline = time.monotonic() + 15
        while True:  # a console just (re)started may not listen yet
            try:
                status, headers, _ = http(web_url)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        assert status == 303, headers
        status, _, page = http(web_url.split("/login")[0] + "/", cookie=session_cookie(headers))
        assert status == 200 and "sequential-demo" in page and ">admin<" in page
        # kill -9: the children go with it.
        dev.proc.kill()
        dev.proc.wait()
        deadline = time.monotonic() + 60
        while not all(process_gone(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(process_gone(p) for p in children), "children outlived legato dev"
    finally:
        if dev.proc.poll() is None:
            dev.proc.kill()
            dev.proc.wait()
    # A leftover of a stack that did not take its children along (an older legato dev): the next
    # start stops it instead of running a second nats-server on the same JetStream folder.
    leftover = EmbeddedNats(state / "nats", preferred_port=0).start()
    assert leftover.proc is not None
    again = Dev(closed_dir, env)
    try:
        again.wait_for("left 1 process(es) running; stopping them")
        again.wait_for("ready")
        assert leftover.proc.wait(timeout=30) is not None
        assert (state / "dev.json").exists()
        again.proc.send_signal(signal.SIGINT)
        try:
            code = again.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            raise AssertionError("legato dev did not stop on Ctrl-C:\n" + again.output()) from None
        assert code == 0, again.output()
    finally:
        if again.proc.poll() is None:
            again.proc.kill()
            again.proc.wait()
        leftover.kill()
    assert modes(closed_dir) == before
