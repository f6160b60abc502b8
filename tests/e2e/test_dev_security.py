"""``legato dev`` is secure by default: generated credentials (0600), NATS requiring them, the CLI
finding them with no flag, Postgres with a generated password, both servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from legato.bus.connection import connect, nats_auth_options

# One worker at a time: these share legato dev's machine-wide Postgres cache (make test runs two workers).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300), pytest.mark.xdist_group("dev")]


def clean_env() -> dict[str, str]:
    """A newcomer's environment: no LEGATO_* from the test session."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("LEGATO_", "OTEL_"))}


def legato(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "legato.cli.main", *args],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def start_dev(tmp_path: Path) -> subprocess.Popen[bytes]:
    out = (tmp_path / "dev.out").open("w")
    dev = subprocess.Popen(
        [sys.executable, "-m", "legato.cli.main", "dev"],
        cwd=tmp_path,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    out.close()
    return dev


async def test_legato_dev_generates_credentials_and_requires_them(tmp_path: Path) -> None:
    dev = start_dev(tmp_path)
    state = tmp_path / ".legato"
    try:
        deadline = time.monotonic() + 150
        while "ready" not in (tmp_path / "dev.out").read_text():
            assert dev.poll() is None, (tmp_path / "dev.out").read_text()
            assert time.monotonic() < deadline, (tmp_path / "dev.out").read_text()
            await asyncio.sleep(0.5)
        # Files: private.
        assert (state / "keys").stat().st_mode & 0o777 == 0o700
        seeds = sorted((state / "keys").glob("*.nk"))
        assert {p.stem for p in seeds} >= {
            "trigger",
            "scheduler",
            "executor",
            "signal_router",
            "admin",
            "viewer",
        }
        for path in [*seeds, state / "dev.json", state / "pg.password"]:
            assert path.stat().st_mode & 0o777 == 0o600, path
        info = json.loads((state / "dev.json").read_text())
        nats_url, db_url = urlsplit(info["nats_url"]), urlsplit(info["database_url"])
        assert nats_url.hostname == "127.0.0.1" and db_url.hostname == "127.0.0.1"
        assert db_url.password and db_url.password not in (tmp_path / "dev.out").read_text()
        # The CLI in this folder needs no flag; a viewer's credentials are refused an admin call.
        listed = legato(tmp_path, "workflow", "list")
        assert listed.returncode == 0, listed.stderr
        refused = legato(
            tmp_path, "--creds", str(state / "keys" / "viewer.nk"), "workflow", "deactivate", "x"
        )
        assert refused.returncode != 0 and "permission_denied" in refused.stdout + refused.stderr
        # Without credentials: no connection; without the password: no database.
        with pytest.raises(ConnectionError):
            await connect(
                info["nats_url"], name="stranger", options=nats_auth_options(creds=""), connect_timeout=2
            )
        with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)):
            await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{db_url.port}/legato")
    finally:
        if dev.poll() is None:
            dev.send_signal(signal.SIGINT)
            try:
                dev.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(dev.pid, signal.SIGKILL)
                dev.wait()
