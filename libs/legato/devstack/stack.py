"""The stack behind ``legato dev``: the whole system on one machine, with progress on the terminal.

Starts an embedded nats-server (JetStream) and an embedded PostgreSQL — or uses the ones given by
``--nats-url``/``--database-url``/``LEGATO_*`` — keeping their data under the state folder (``.legato``),
applies migrations, provisions streams, runs every service as a child process, loads ``examples/``,
starts a demo run, and prints each run's progress. Ctrl-C stops everything in order. A second
``legato dev`` in the same folder says one is running instead of touching its data.

Every child (nats-server, postgres, the services) gets the kernel's parent-death signal, so a
``kill -9`` of ``legato dev`` takes them down too; should some survive anyway (an older version, a
child that ignored it), the next ``legato dev`` finds them through ``dev.json`` and the state folder
and stops them before starting.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import msgspec

from legato.bus.connection import connect, nats_auth_options
from legato.bus.streams import provision_streams
from legato.bus.topology import Topology
from legato.client import ApiError, LegatoClient
from legato.config.settings import dev_state_file, read_dev_state
from legato.core.errors import DefinitionError
from legato.devstack.nats_server import EmbeddedNats
from legato.devstack.ports import free_port
from legato.devstack.postgres_server import EmbeddedPostgres
from legato.devstack.processes import die_with_parent
from legato.flow.loading import WorkflowNotFound, load_workflow
from legato.protocol.events import RunEvent
from legato.security.keyring import Keyring
from legato.store.migrations import migrate_url
from legato.store.pool import ensure_database, redact

SERVICES = ("trigger", "scheduler", "executor", "signal_router")
STOP_ORDER = ("web", "trigger", "signal_router", "scheduler", "executor")
WEB_PORT = 8765  # the console's preferred port (the next free one when taken)


@dataclass(frozen=True, kw_only=True)
class DevOptions:
    """What ``legato dev`` was asked for; a server URL left None is embedded (or taken from ``LEGATO_*``)."""

    state_dir: str | None = None
    nats_url: str | None = None
    database_url: str | None = None
    examples: str = "examples"
    no_demo: bool = False
    executors: int = 1
    concurrency: int = 16


def say(text: str) -> None:
    """One line of ``legato dev`` progress on the terminal."""
    print(f"\033[1mlegato dev\033[0m {text}" if sys.stdout.isatty() else f"legato dev: {text}", flush=True)


def run_dev(options: DevOptions) -> int:
    """Run the stack until Ctrl-C (one per state folder); the process exit code."""
    state_dir = Path(options.state_dir or os.environ.get("LEGATO_STATE_DIR") or ".legato").resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    lock_file = (state_dir / "dev.lock").open("a+")
    try:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        running = read_dev_state(state_dir)
        print(
            f"legato dev is already running in {state_dir} (pid {running.get('pid', '?')}; "
            f"NATS {running.get('nats_url', '?')}, Postgres {redact(str(running.get('database_url', '?')))}).\n"
            "Use that one (other terminals find it through .legato/dev.json), or stop it first.",
            file=sys.stderr,
        )
        return 1
    try:
        stop_leftovers(state_dir)
    except RuntimeError as exc:
        print(f"legato dev: {exc}", file=sys.stderr)
        lock_file.close()
        return 1
    try:
        return asyncio.run(DevStack(options, state_dir).run())
    except KeyboardInterrupt:
        return 130
    finally:
        with contextlib.suppress(OSError):
            dev_state_file(state_dir).unlink()
        lock_file.close()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def leftovers(state_dir: Path) -> dict[int, str]:
    """Processes a dead ``legato dev`` of this state folder left behind: the children it recorded
    (same command line as recorded) and any process whose command line names the state folder."""
    found: dict[int, str] = {}
    recorded = read_dev_state(state_dir).get("children")
    for pid_text, cmd in (recorded or {}).items() if isinstance(recorded, dict) else []:
        if str(pid_text).isdigit() and cmd and _cmdline(int(pid_text)) == cmd:
            found[int(pid_text)] = cmd
    marker = f"{state_dir}{os.sep}"
    env_marker = f"\0LEGATO_STATE_DIR={state_dir}\0".encode()
    for entry in Path("/proc").iterdir():  # bounded: the processes of this machine
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        cmd = _cmdline(int(entry.name))
        if marker in cmd:  # nats-server -c <state>/nats/…, postgres -D <state>/pg
            found[int(entry.name)] = cmd
        elif " -m legato." in cmd:  # a service: `legato dev` gave it LEGATO_STATE_DIR
            with contextlib.suppress(OSError):
                if env_marker in b"\0" + (entry / "environ").read_bytes():
                    found[int(entry.name)] = cmd
    return found


def stop_leftovers(state_dir: Path, timeout: float = 20.0) -> None:
    """SIGTERM what a dead ``legato dev`` left running here, SIGKILL what outlives ``timeout``."""
    found = leftovers(state_dir)
    if not found:
        return
    old = read_dev_state(state_dir).get("pid", "?")
    say(
        f"a previous legato dev here (pid {old}) died and left {len(found)} process(es) running; stopping them"
    )
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_cmdline(p) == c for p, c in found.items()):
        time.sleep(0.1)
    for pid, cmd in found.items():
        if _cmdline(pid) == cmd:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    alive = [p for p, c in found.items() if _cmdline(p) == c]
    if alive:
        raise RuntimeError(
            f"processes of a previous legato dev still run and cannot be stopped: "
            f"{', '.join(str(p) for p in alive)}; stop them (kill -9 PID) and start legato dev again"
        )


def legato_command() -> str:
    """How to type ``legato`` in this shell: the bare name when PATH finds this one, else its path."""
    here = Path(sys.executable).parent / "legato"
    found = shutil.which("legato")
    if found and Path(found).resolve() == here.resolve():
        return "legato"
    try:
        return str(here.relative_to(Path.cwd()))
    except ValueError:
        return str(here)


class DevStack:
    """The servers, the service processes (restarted when they die), the examples and the progress
    watcher of one ``legato dev``; ``run()`` returns when Ctrl-C stopped them all in order."""

    def __init__(self, options: DevOptions, state_dir: Path) -> None:
        self.options = options
        self.state_dir = state_dir
        self.logs = state_dir / "logs"
        self.nats: EmbeddedNats | None = None
        self.pg: EmbeddedPostgres | None = None
        self.children: dict[str, list[subprocess.Popen[bytes]]] = {}
        self.stop = asyncio.Event()
        self.nats_url = ""
        self.database_url = ""
        self.namespace = os.environ.get("LEGATO_NAMESPACE", "")
        self.keyring: Keyring | None = None
        self.web_url = ""  # the console's one-click login URL (with a fresh admin token)
        self._web_token = ""  # the admin token of that URL
        self.web_port = 0

    def creds(self, name: str) -> str | None:
        """The seed of a generated identity; None (the environment's) with an external NATS."""
        return str(self.keyring.seed_file(name)) if self.keyring is not None else None

    def nats_options(self, name: str) -> dict[str, Any]:
        return nats_auth_options(creds=self.creds(name))

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)
        try:
            # On this thread: the parent-death signal follows the thread that spawned the child.
            self.start_servers()
            self.write_state()
            await self.prepare()
            self.start_services()
            self.write_state()
            await self.load_examples()
            watcher = asyncio.create_task(self.watch())
            supervisor = asyncio.create_task(self.supervise())
            cmd = legato_command()
            say(
                f"ready — try:  {cmd} workflow list | {cmd} start hello --wait | {cmd} instances "
                "(Ctrl-C stops everything)"
            )
            if cmd != "legato":
                say(f"`legato` is not on your PATH: use {cmd}, or `source {Path(cmd).parent}/activate` first")
            await self.stop.wait()
            watcher.cancel()
            supervisor.cancel()
            # Bounded: the watcher's NATS close must not hold up the stop.
            await asyncio.wait([watcher, supervisor], timeout=5.0)
            say("stopping …")
            return 0
        except Exception as exc:
            print(f"legato dev: {exc}", file=sys.stderr)
            return 1
        finally:
            await asyncio.to_thread(self.stop_all)

    # ------------------------------------------------------------------ servers

    def start_servers(self) -> None:
        nats_url = self.options.nats_url or os.environ.get("LEGATO_NATS_URL")
        if nats_url:
            self.nats_url = nats_url
            say(f"using NATS at {nats_url}")
        else:
            # First start generates one nkey per service and per API role (mode 0600, kept after).
            self.keyring = Keyring(self.state_dir / "keys").ensure()
            self.nats = EmbeddedNats(self.state_dir / "nats", preferred_port=4222, users=self.keyring.users())
            self.nats.stop_with_parent = True
            self.nats.start()
            self.nats_url = self.nats.url
            say(
                f"NATS (JetStream) up at {self.nats_url}, data in {self.state_dir / 'nats'}, "
                f"credentials in {self.keyring.folder}"
            )
        db_url = self.options.database_url or os.environ.get("LEGATO_DATABASE_URL")
        if db_url:
            self.database_url = db_url
            say(f"using PostgreSQL at {redact(db_url)}")
        else:
            self.pg = EmbeddedPostgres(self.state_dir / "pg", preferred_port=5432)
            self.pg.stop_with_parent = True
            self.pg.start()
            self.database_url = self.pg.url("legato")
            say(f"PostgreSQL up at {redact(self.database_url)}, data in {self.state_dir / 'pg'}")

    async def prepare(self) -> None:
        try:
            await ensure_database(self.database_url)
        except OSError as exc:
            raise RuntimeError(
                f"cannot reach PostgreSQL at {redact(self.database_url)} ({self._origin('database_url')}): "
                f"{exc.strerror or exc}"
            ) from None
        applied = await migrate_url(self.database_url)
        if applied:
            say(f"migrations applied: {', '.join(str(v) for v in applied)}")
        try:
            nc = await connect(self.nats_url, name="legato-dev", options=self.nats_options("scheduler"))
        except ConnectionError as exc:
            raise RuntimeError(
                f"{exc} ({self._origin('nats_url')}); "
                "start it, or leave --nats-url/LEGATO_NATS_URL unset for an embedded one"
            ) from None
        try:
            # The services set the attempts bucket's TTL from their own LEGATO_ATTEMPT_CLAIM_TTL.
            await provision_streams(nc.jetstream(), Topology(self.namespace), claim_ttl=None)
        finally:
            await nc.close()

    def _origin(self, name: str) -> str:
        """Where a server URL came from: the flag, the environment, or the embedded server."""
        if getattr(self.options, name, None):
            return f"--{name.replace('_', '-')}"
        if os.environ.get(f"LEGATO_{name.upper()}"):
            return f"LEGATO_{name.upper()}"
        return "embedded"

    def write_state(self) -> None:
        # 0600: the database URL in it carries the generated password.
        path = dev_state_file(self.state_dir)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(
                json.dumps(
                    {
                        "nats_url": self.nats_url,
                        "database_url": self.database_url,
                        "namespace": self.namespace,
                        # The CLI in this folder connects as the dev admin with no extra flag.
                        **(
                            {
                                "nats_creds": str(self.keyring.seed_file("admin")),
                                "auth_users": str(self.keyring.users_file),
                            }
                            if self.keyring is not None
                            else {}
                        ),
                        **({"web_url": self.web_url} if self.web_url else {}),
                        "pid": os.getpid(),
                        "started_at": time.time(),
                        "logs": str(self.logs),
                        "children": {str(p.pid): _cmdline(p.pid) for p in self._child_procs()},
                    },
                    indent=2,
                )
            )

    def _child_procs(self) -> list[subprocess.Popen[bytes]]:
        servers = [s.proc for s in (self.nats, self.pg) if s is not None and s.proc is not None]
        return [*servers, *(p for procs in self.children.values() for p in procs)]

    # ------------------------------------------------------------------ services

    def spawn(self, service: str, extra: list[str], index: int = 0) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "LEGATO_NATS_URL": self.nats_url,
            "LEGATO_DATABASE_URL": self.database_url,
            "LEGATO_LOG_FORMAT": "json",
            "LEGATO_STATE_DIR": str(self.state_dir),
        }
        if service in ("executor", "web"):
            del env["LEGATO_DATABASE_URL"]  # stateless: it is not told where the database is
        if service == "web":
            env["LEGATO_NAMESPACE"] = self.namespace
            env["LEGATO_NATS_CREDS"] = ""  # the console holds no identity of its own: it acts as the users
        elif self.keyring is not None:
            env["LEGATO_NATS_CREDS"] = str(self.keyring.seed_file(service))
            env["LEGATO_AUTH_USERS"] = str(self.keyring.users_file)
        base = int(os.environ.get("LEGATO_METRICS_PORT") or 0)
        if base:
            # One process tree, one host: each child gets its own port (trigger base, scheduler +1,
            # signal router +2, executors +3, +4, …).
            offsets = {"trigger": 0, "scheduler": 1, "signal_router": 2, "executor": 3}
            env["LEGATO_METRICS_PORT"] = str(base + offsets.get(service, 0) + index)
        name = service if index == 0 else f"{service}-{index}"
        log: IO[bytes] = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", f"legato.{service}", *extra],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches `legato dev` only; it stops the children in order
            preexec_fn=die_with_parent(signal.SIGTERM),  # …and kill -9 of `legato dev` stops them too
        )
        log.close()
        return proc

    def service_args(self, service: str, index: int) -> list[str]:
        if service == "scheduler":
            return ["--replica-id", "dev-scheduler"]
        if service == "executor":
            return ["--queue", "default", "--concurrency", str(self.options.concurrency)]
        if service == "web" and self.keyring is not None:
            return [
                "--listen",
                f"127.0.0.1:{self.web_port}",
                "--keys",
                str(self.keyring.folder),
                "--tokens",
                str(self.state_dir / "web-tokens.json"),
            ]
        return []

    def start_services(self) -> None:
        for service in SERVICES:
            if not _service_exists(service):
                continue
            count = self.options.executors if service == "executor" else 1
            self.children[service] = [
                self.spawn(service, self.service_args(service, i), i) for i in range(count)
            ]
        names = ", ".join(f"{s} x{len(p)}" if len(p) > 1 else s for s, p in self.children.items())
        say(f"services started: {names} (logs in {self.logs})")
        self.start_web()

    def start_web(self) -> None:
        """The ops console on 127.0.0.1, with a fresh one-click login token for the dev admin (like
        Jupyter's); its URL goes to the terminal and to ``dev.json`` (``web_url``, file mode 0600)."""
        if self.keyring is None:
            say(
                "web console not started: it needs the embedded NATS's keyring (or run `legato web --keys DIR`)"
            )
            return
        if not _service_exists("web") or importlib.util.find_spec("starlette") is None:
            say("web console not started: install the web extra (pip install 'legato[web]')")
            return
        from legato.web.logins import add_token

        tokens = self.state_dir / "web-tokens.json"
        with contextlib.suppress(FileNotFoundError):
            tokens.unlink()  # one token per `legato dev`: the previous one's stops working
        token = add_token(tokens, "admin")
        self._web_token = token
        self.children["web"] = [self.spawn("web", self._web_args())]
        say(f"web console: {self.web_url}")

    def _web_args(self) -> list[str]:
        """The console's arguments on a port free now (its preferred one when it is), and its URL."""
        self.web_port = free_port(WEB_PORT)
        self.web_url = f"http://127.0.0.1:{self.web_port}/login?token={self._web_token}"
        return self.service_args("web", 0)

    async def supervise(self) -> None:
        """Restart a service that dies, with a growing pause; give up on one that keeps dying."""
        restarts: dict[tuple[str, int], int] = {}
        due: dict[tuple[str, int], float] = {}
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for service, procs in self.children.items():
                for i, proc in enumerate(procs):
                    key = (service, i)
                    if proc.poll() is None or restarts.get(key, 0) < 0:
                        continue
                    if key not in due:
                        n = restarts.get(key, 0)
                        if n >= 5:
                            say(
                                f"{service} keeps exiting ({proc.returncode}); not restarting it again — "
                                f"see {self.logs / service}.log"
                            )
                            restarts[key] = -1
                            continue
                        delay = min(30.0, 2.0**n)
                        say(
                            f"{service} exited with {proc.returncode}; restarting in {delay:.0f}s "
                            f"(see {self.logs / service}.log)"
                        )
                        due[key] = now + delay
                    elif now >= due[key]:
                        # (A pop in the test itself dropped the restart whenever the pause outlasted
                        # one look: a dead child was announced again and again, never restarted.)
                        del due[key]
                        restarts[key] = restarts.get(key, 0) + 1
                        if service == "web":
                            # Its port may have been taken between the check and its bind (it exits
                            # with 3 then): it comes back on a port free now, and says where.
                            procs[i] = self.spawn(service, self._web_args(), i)
                            say(f"web console: {self.web_url}")
                        else:
                            procs[i] = self.spawn(service, self.service_args(service, i), i)
                        self.write_state()

    def stop_all(self, budget: float = 30.0) -> None:
        """Stop the services in ``STOP_ORDER`` (each gets SIGTERM and its grace), all within ``budget``
        seconds: what is still running then is killed, so Ctrl-C always ends within about a minute."""
        deadline = time.monotonic() + budget
        for service in STOP_ORDER:
            procs = [p for p in self.children.get(service, []) if p.poll() is None]
            if not procs:
                continue
            say(f"stopping {service} …")
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    say(f"{service} did not stop within {budget:.0f}s of Ctrl-C: killing it")
                    proc.kill()
                    proc.wait()
        self.children.clear()
        if self.pg is not None:
            self.pg.stop()
        if self.nats is not None:
            self.nats.stop()
        say("stopped")

    # ------------------------------------------------------------------ examples and progress

    async def load_examples(self) -> None:
        folder = Path(self.options.examples)
        client = await LegatoClient.connect(
            self.nats_url, namespace=self.namespace, actor="legato-dev", creds=self.creds("admin")
        )
        try:
            await self._wait_for_api(client)
            files = (  # recursively: examples/strategies/*.yaml are examples too; *.py with a `flow` Workflow
                sorted(
                    p
                    for p in folder.rglob("*")
                    if p.suffix in (".yaml", ".yml", ".json", ".py") and p.is_file()
                )
                if folder.is_dir()
                else []
            )
            for path in files:
                name = path.relative_to(folder)
                try:
                    text = path.read_text(encoding="utf-8") if path.suffix != ".py" else code_example(path)
                    if text is None:
                        continue
                    res = await client.push(text, source=str(path))
                    say(f"loaded {name}: {res.workflow_id} v{res.version}")
                except (ApiError, OSError, UnicodeDecodeError, WorkflowNotFound, DefinitionError) as exc:
                    say(f"could not load {name}: {exc}")
            if not self.options.no_demo and any(p.stem == "hello" for p in files):
                run = await client.start("hello", request_id=f"dev-demo-{int(time.time())}")
                say(f"demo run of hello started: {run.instance_id} (legato show {run.instance_id})")
        finally:
            await client.close()

    async def _wait_for_api(self, client: LegatoClient, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                await client.call("workflow.list", {"limit": 1}, timeout=2.0)
                return
            except ApiError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the API did not come up: {exc}") from None
                await asyncio.sleep(0.3)

    async def watch(self) -> None:
        """Print each run's status changes: the lifecycle events (docs/events.md), read as they are
        published (a plain subscription: the terminal needs no replay and no acks)."""
        nc = await connect(self.nats_url, name="legato-dev-watch", options=self.nats_options("admin"))
        decoder = msgspec.json.Decoder(RunEvent)

        async def on_msg(msg: Any) -> None:
            try:
                event = decoder.decode(msg.data)
            except msgspec.DecodeError:
                return
            stamp = time.strftime("%H:%M:%S", time.localtime(event.at or time.time()))
            why = f" ({event.reason})" if event.reason and event.reason != event.status else ""
            print(f"  {stamp}  {event.workflow_id:<24} {event.instance_id}  {event.status}{why}", flush=True)

        await nc.subscribe(Topology(self.namespace).notify_filter("run"), cb=on_msg)
        try:
            await asyncio.Event().wait()
        finally:
            await nc.close()


def code_example(path: Path) -> str | None:
    """The YAML of the Workflow a ``.py`` example names ``flow`` (None for a helper module without one)."""
    try:
        return load_workflow(f"{path}:flow").source_yaml()
    except WorkflowNotFound as exc:
        if exc.missing == "attribute":
            return None
        raise


def _service_exists(service: str) -> bool:
    try:
        return importlib.util.find_spec(f"legato.{service}.__main__") is not None
    except ModuleNotFoundError:
        return False
