"""``legato dev``: the whole system on one machine, with progress on the terminal.

Starts an embedded nats-server (JetStream) and an embedded PostgreSQL — or uses the ones given by
``--nats-url``/``--database-url``/``LEGATO_*`` — keeping their data under the state folder (``.legato``),
applies migrations, provisions streams, runs every service as a child process, loads ``examples/``,
starts a demo run, and prints each run's progress. Ctrl-C stops everything in order. A second
``legato dev`` in the same folder says one is running instead of touching its data.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import msgspec

from legato.bus.connection import connect, nats_auth_options
from legato.bus.streams import provision_streams
from legato.bus.topology import Topology
from legato.client import ApiError, LegatoClient
from legato.devstack import EmbeddedNats, EmbeddedPostgres
from legato.protocol.messages import InstanceProgress
from legato.runtime.settings import dev_state_file, read_dev_state
from legato.security.keyring import Keyring
from legato.store.migrations import migrate_url
from legato.store.pool import ensure_database, redact

SERVICES = ("trigger", "scheduler", "executor", "signal_router")
STOP_ORDER = ("trigger", "signal_router", "scheduler", "executor")


def say(text: str) -> None:
    print(f"\033[1mlegato dev\033[0m {text}" if sys.stdout.isatty() else f"legato dev: {text}", flush=True)


def run_dev(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir or os.environ.get("LEGATO_STATE_DIR") or ".legato").resolve()
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
        return asyncio.run(DevStack(args, state_dir).run())
    except KeyboardInterrupt:
        return 130
    finally:
        with contextlib.suppress(OSError):
            dev_state_file(state_dir).unlink()
        lock_file.close()


class DevStack:
    def __init__(self, args: argparse.Namespace, state_dir: Path) -> None:
        self.args = args
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
            await asyncio.to_thread(self.start_servers)
            await self.prepare()
            self.start_services()
            self.write_state()
            await self.load_examples()
            watcher = asyncio.create_task(self.watch())
            supervisor = asyncio.create_task(self.supervise())
            say(
                "ready — try:  legato workflow list | legato start hello --wait | legato instances "
                "(Ctrl-C stops everything)"
            )
            await self.stop.wait()
            watcher.cancel()
            supervisor.cancel()
            await asyncio.gather(watcher, supervisor, return_exceptions=True)
            say("stopping …")
            return 0
        except Exception as exc:
            print(f"legato dev: {exc}", file=sys.stderr)
            return 1
        finally:
            await asyncio.to_thread(self.stop_all)

    # ------------------------------------------------------------------ servers

    def start_servers(self) -> None:
        nats_url = self.args.nats_url or os.environ.get("LEGATO_NATS_URL")
        if nats_url:
            self.nats_url = nats_url
            say(f"using NATS at {nats_url}")
        else:
            # First start generates one nkey per service and per API role (mode 0600, kept after).
            self.keyring = Keyring(self.state_dir / "keys").ensure()
            self.nats = EmbeddedNats(
                self.state_dir / "nats", preferred_port=4222, users=self.keyring.users()
            ).start()
            self.nats_url = self.nats.url
            say(
                f"NATS (JetStream) up at {self.nats_url}, data in {self.state_dir / 'nats'}, "
                f"credentials in {self.keyring.folder}"
            )
        db_url = self.args.database_url or os.environ.get("LEGATO_DATABASE_URL")
        if db_url:
            self.database_url = db_url
            say(f"using PostgreSQL at {redact(db_url)}")
        else:
            self.pg = EmbeddedPostgres(self.state_dir / "pg", preferred_port=5432).start()
            self.database_url = self.pg.url("legato")
            say(f"PostgreSQL up at {redact(self.database_url)}, data in {self.state_dir / 'pg'}")

    async def prepare(self) -> None:
        await ensure_database(self.database_url)
        applied = await migrate_url(self.database_url)
        if applied:
            say(f"migrations applied: {', '.join(str(v) for v in applied)}")
        nc = await connect(self.nats_url, name="legato-dev", options=self.nats_options("scheduler"))
        try:
            await provision_streams(nc.jetstream(), Topology(self.namespace))
        finally:
            await nc.close()

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
                        "pid": os.getpid(),
                        "started_at": time.time(),
                        "logs": str(self.logs),
                    },
                    indent=2,
                )
            )

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
        if self.keyring is not None:
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
        )
        log.close()
        return proc

    def service_args(self, service: str, index: int) -> list[str]:
        if service == "scheduler":
            return ["--replica-id", "dev-scheduler"]
        if service == "executor":
            return ["--queue", "default", "--concurrency", str(self.args.concurrency)]
        return []

    def start_services(self) -> None:
        for service in SERVICES:
            if not _service_exists(service):
                continue
            count = self.args.executors if service == "executor" else 1
            self.children[service] = [
                self.spawn(service, self.service_args(service, i), i) for i in range(count)
            ]
        names = ", ".join(f"{s} x{len(p)}" if len(p) > 1 else s for s, p in self.children.items())
        say(f"services started: {names} (logs in {self.logs})")

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
                    elif now >= due.pop(key):
                        restarts[key] = restarts.get(key, 0) + 1
                        procs[i] = self.spawn(service, self.service_args(service, i), i)

    def stop_all(self) -> None:
        for service in STOP_ORDER:
            procs = self.children.get(service, [])
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
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
        folder = Path(self.args.examples)
        client = await LegatoClient.connect(
            self.nats_url, namespace=self.namespace, actor="legato-dev", creds=self.creds("admin")
        )
        try:
            await self._wait_for_api(client)
            files = (
                sorted([*folder.glob("*.yaml"), *folder.glob("*.yml"), *folder.glob("*.json")])
                if folder.is_dir()
                else []
            )
            for path in files:
                try:
                    res = await client.push(path.read_text(), source=str(path))
                    say(f"loaded {path.name}: {res['workflow_id']} v{res['version']}")
                except ApiError as exc:
                    say(f"could not load {path.name}: {exc}")
            if not self.args.no_demo and any(p.stem == "hello" for p in files):
                res = await client.start("hello", request_id=f"dev-demo-{int(time.time())}")
                say(f"demo run of hello started: {res['instance_id']} (legato show {res['instance_id']})")
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
        nc = await connect(self.nats_url, name="legato-dev-watch", options=self.nats_options("admin"))
        decoder = msgspec.json.Decoder(InstanceProgress)

        async def on_msg(msg: Any) -> None:
            try:
                p = decoder.decode(msg.data)
            except msgspec.DecodeError:
                return
            stamp = time.strftime("%H:%M:%S", time.localtime(p.at or time.time()))
            why = f" ({p.reason})" if p.reason and p.reason != p.status else ""
            print(f"  {stamp}  {p.workflow_id:<24} {p.instance_id}  {p.status}{why}", flush=True)

        await nc.subscribe(Topology(self.namespace).progress_wildcard, cb=on_msg)
        try:
            await asyncio.Event().wait()
        finally:
            await nc.close()


def _service_exists(service: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(f"legato.{service}.__main__") is not None
    except ModuleNotFoundError:
        return False
