"""Secrets and connections are one kind of lookup (``NamedValueStore``), each with its own names."""

from __future__ import annotations

from pathlib import Path

import pytest

from legato.core.connections import connection_env_name
from legato.core.secrets import secret_env_name
from legato.executor.connection_store import ConnectionStore
from legato.executor.secret_store import SecretStore
from legato.executor.step_runner import StepFailed


def test_each_store_reads_its_own_directory_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "connections").mkdir()
    (tmp_path / "secrets" / "token").write_text("from-secrets\n")
    (tmp_path / "connections" / "token").write_text("x://from-connections\n")
    monkeypatch.setenv("LEGATO_SECRETS_DIR", str(tmp_path / "secrets"))
    monkeypatch.setenv("LEGATO_CONNECTIONS_DIR", str(tmp_path / "connections"))
    assert SecretStore.from_environment().lookup("token") == "from-secrets"
    assert ConnectionStore.from_environment().lookup("token").url == "x://from-connections"


def test_env_names_and_errors_name_the_kind(tmp_path: Path) -> None:
    assert SecretStore().env_name("dw.main-2") == secret_env_name("dw.main-2") == "LEGATO_SECRET_DW_MAIN_2"
    assert ConnectionStore().env_name("dw.main-2") == connection_env_name("dw.main-2")
    with pytest.raises(StepFailed, match=r"^secret 'nope' is not available .* LEGATO_SECRET_NOPE\)$"):
        SecretStore(directory=tmp_path, environ={}).lookup("nope")
    with pytest.raises(StepFailed, match=r"^connection '\.\./x': a connection name is a letter"):
        ConnectionStore(environ={}).lookup("../x")
    (tmp_path / "big").write_bytes(b"x" * (64 * 1024 + 1))
    with pytest.raises(StepFailed, match=r"^connection 'big' is larger than 64 KiB$"):
        ConnectionStore(directory=tmp_path, environ={}).lookup("big")
