"""Legato's services as real child processes: start, SIGTERM, kill -9, restart.

Used by the test suite (crash tests), the benchmarks and anything else that needs the real stack.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from legato.config.settings import Settings

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: the child between fork and exec only calls it


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn``: the kernel sends ``sig`` to the child when this process dies, kill -9 included
    (Linux ``PR_SET_PDEATHSIG``; spawn from a thread that lives as long as the process)."""
    parent = os.getpid()

    def arm() -> None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return arm


class ServiceProcess:
    """One ``python -m legato.<service>`` child in its own process group, logging to a file."""

    def __init__(self, name: str, module: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.module = module
        self.args = args
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        # SIGTERM from the kernel when the process that started it dies, kill -9 included (a
        # benchmark's services must not outlive it and load the machine the next one measures on).
        self.stop_with_parent = False

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent() if self.stop_with_parent else None,
        )
        log.close()
        self.starts += 1

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def kill9(self) -> None:
        """SIGKILL the whole process group (the service and anything it spawned)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (graceful shutdown), SIGKILL if it does not end within ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        return self.proc.returncode

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def service_env(
    settings: Settings, state_dir: Path, extra: dict[str, str] | None = None, *, service: str = ""
) -> dict[str, str]:
    """A service's environment; with credentials (``settings.auth_users``), the service's own seed from
    the same keyring folder (``<folder>/<service>.nk``)."""
    env = {
        **os.environ,
        "LEGATO_NATS_URL": settings.nats_url,
        "LEGATO_DATABASE_URL": settings.database_url,
        "LEGATO_NAMESPACE": settings.namespace,
        "LEGATO_PARTITIONS": str(settings.partitions),
        "LEGATO_LOG_FORMAT": "json",
        "LEGATO_LOG_LEVEL": settings.log_level,
        "LEGATO_GRACE_PERIOD": str(settings.grace_period),
        "LEGATO_STATE_DIR": str(state_dir),
    }
    # Credentials and TLS from the settings, else as inherited (a test session exports its own).
    for var, value in (
        ("LEGATO_AUTH_USERS", settings.auth_users),
        ("LEGATO_NATS_CREDS", settings.nats_creds),
        ("LEGATO_NATS_TLS_CA", settings.nats_tls_ca),
        ("LEGATO_NATS_TLS_CERT", settings.nats_tls_cert),
        ("LEGATO_NATS_TLS_KEY", settings.nats_tls_key),
    ):
        if value:
            env[var] = value
    if settings.insecure:
        env["LEGATO_INSECURE"] = "1"
    users = env.get("LEGATO_AUTH_USERS", "")
    if service and users:
        own = Path(users).parent / f"{service}.nk"
        if own.exists():
            env["LEGATO_NATS_CREDS"] = str(own)
    env.update(extra or {})
    return env


class Stack:
    """trigger + scheduler + executor(s) (+ the signal router) against given servers."""

    def __init__(
        self,
        settings: Settings,
        log_dir: Path,
        *,
        executors: int = 1,
        concurrency: int = 16,
        extra_env: dict[str, str] | None = None,
        lease_ttl: float = 3.0,
        schedulers: int = 1,
        per_service_env: dict[str, dict[str, str]] | None = None,
    ) -> None:
        """``extra_env``: more environment for every service; ``per_service_env``: for one kind of
        service (``trigger``, ``scheduler``, ``executor``, ``signal_router``), e.g. its metrics port."""
        self.settings = settings
        self.env = service_env(settings, log_dir / "state", extra_env)
        self.log_dir = log_dir
        own = per_service_env or {}

        def env(service: str) -> dict[str, str]:
            return {
                **service_env(settings, log_dir / "state", extra_env, service=service),
                **own.get(service, {}),
            }

        self.services: dict[str, ServiceProcess] = {
            "trigger": ServiceProcess("trigger", "legato.trigger", [], env("trigger"), log_dir),
        }
        for i in range(schedulers):
            name = "scheduler" if i == 0 else f"scheduler{i}"
            self.services[name] = ServiceProcess(
                name,
                "legato.scheduler",
                ["--replica-id", f"replica-{i}", "--lease-ttl", str(lease_ttl)],
                env("scheduler"),
                log_dir,
            )
        # The executor is stateless: it is not told where the database is.
        for i in range(executors):
            self.services[f"executor{i}"] = ServiceProcess(
                f"executor{i}",
                "legato.executor",
                ["--queue", "default", "--concurrency", str(concurrency)],
                {k: v for k, v in env("executor").items() if k != "LEGATO_DATABASE_URL"},
                log_dir,
            )
        if _module_exists("legato.signal_router"):
            self.services["signal_router"] = ServiceProcess(
                "signal_router", "legato.signal_router", [], env("signal_router"), log_dir
            )

    def __getitem__(self, name: str) -> ServiceProcess:
        return self.services[name]

    def start(self) -> None:
        for svc in self.services.values():
            svc.start()

    def stop(self) -> None:
        order = [
            "trigger",
            "signal_router",
            *[n for n in self.services if n.startswith("scheduler")],
            *[n for n in self.services if n.startswith("executor")],
        ]
        for name in order:
            if name in self.services:
                self.services[name].terminate()

    def logs(self) -> str:
        return "\n".join(f"--- {n} ---\n{s.log_tail()}" for n, s in self.services.items())


def _module_exists(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(f"{name}.__main__") is not None
    except ModuleNotFoundError:
        return False
