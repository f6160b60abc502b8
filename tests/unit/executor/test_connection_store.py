"""Where the executor finds a named connection, and what of it is masked in a step's reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from legato.core.connections import connection_env_name, connection_scheme, credentials_in
from legato.executor.connection_store import ConnectionStore
from legato.executor.step_runner import StepFailed


def test_a_file_wins_over_the_environment(tmp_path: Path) -> None:
    (tmp_path / "warehouse").write_text("postgresql://u:from-file@h/db\n")
    env = {"LEGATO_CONNECTION_WAREHOUSE": "postgresql://u:from-env@h/db", "LEGATO_CONNECTION_LAKE_2": "x://y"}
    store = ConnectionStore(directory=tmp_path, environ=env)
    assert store.lookup("warehouse").url == "postgresql://u:from-file@h/db"
    assert store.lookup("lake-2").url == "x://y"
    assert ConnectionStore(environ=env).lookup("warehouse").url == "postgresql://u:from-env@h/db"


def test_a_missing_or_malformed_connection_fails_naming_it(tmp_path: Path) -> None:
    store = ConnectionStore(directory=tmp_path, environ={})
    with pytest.raises(StepFailed) as missing:
        store.lookup("warehouse")
    assert missing.value.error == (
        "connection 'warehouse' is not available to this executor (provide a file 'warehouse' in "
        "$LEGATO_CONNECTIONS_DIR or the environment variable LEGATO_CONNECTION_WAREHOUSE)"
    )
    with pytest.raises(StepFailed, match="a connection name is a letter"):
        store.lookup("../etc/passwd")


def test_the_url_and_its_password_are_masked() -> None:
    url = "postgresql://loader:p%40ss-w0rd!@db.internal:5432/dw"
    assert credentials_in(url)[0] == url
    assert set(credentials_in(url)[1:]) == {"p%40ss-w0rd!", "p@ss-w0rd!"}
    assert credentials_in("postgresql://db/dw") == ["postgresql://db/dw"]
    masking = ConnectionStore(environ={"LEGATO_CONNECTION_DW": url}).lookup("dw").masking()
    assert (
        masking.mask(f"failed: {url} / password p@ss-w0rd! rejected") == "failed: *** / password *** rejected"
    )
    assert connection_env_name("dw.main-2") == "LEGATO_CONNECTION_DW_MAIN_2"
    assert connection_scheme(" PostgreSQL://x") == "postgresql"
