"""Where the executor finds a named secret, and how it masks one in what a step reports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from legato.core.values import coerce
from legato.executor.secret_store import ResolvedSecrets, SecretStore
from legato.executor.step_runner import StepFailed


def test_a_file_wins_over_the_environment_and_loses_one_trailing_newline(tmp_path: Path) -> None:
    (tmp_path / "db.main").write_text("from-file\n")
    store = SecretStore(
        directory=tmp_path, environ={"LEGATO_SECRET_DB_MAIN": "from-env", "LEGATO_SECRET_T": "t"}
    )
    assert store.lookup("db.main") == "from-file"
    assert store.lookup("T") == "t"
    resolved = store.resolve({"a": {"$secret": "db.main"}, "b": [{"$secret": "T"}], "c": "plain"})
    assert resolved.values == {"T": "t", "db.main": "from-file"}
    assert resolved.environment() == {"LEGATO_SECRET_T": "t", "LEGATO_SECRET_DB_MAIN": "from-file"}
    assert resolved.reveal({"a": {"$secret": "db.main"}, "n": 1}) == {"a": "from-file", "n": 1}


def test_a_missing_or_malformed_secret_is_a_step_failure_naming_it(tmp_path: Path) -> None:
    store = SecretStore(directory=tmp_path, environ={})
    with pytest.raises(StepFailed, match=r"secret 'nope' is not available.*LEGATO_SECRET_NOPE"):
        store.lookup("nope")
    with pytest.raises(StepFailed, match="a secret name is a letter"):
        store.lookup("../etc/passwd")


def test_masking_covers_text_cut_tails_lines_and_json() -> None:
    secrets = ResolvedSecrets(
        {"k": "hunter2-secret", "pem": "-----BEGIN KEY-----\nAAAABBBBCCCC\n-----END-----"}
    )
    assert secrets.mask("pw=hunter2-secret!") == "pw=***!"
    assert secrets.mask_tail("2-secret and more") == "*** and more"  # the tail began inside the value
    assert secrets.mask("line: AAAABBBBCCCC") == "line: ***"
    assert secrets.mask_json({"hunter2-secret": ["x hunter2-secret", 3]}) == {"***": ["x ***", 3]}


def test_a_secret_param_holds_only_a_reference() -> None:
    assert coerce("warehouse_db", "secret") == {"$secret": "warehouse_db"}
    assert coerce({"$secret": "warehouse_db"}, "secret") == {"$secret": "warehouse_db"}
    with pytest.raises(ValueError, match="secret's name"):
        coerce("not a name!", "secret")


def test_the_executor_makes_itself_non_dumpable_so_same_user_steps_cannot_read_its_proc_files() -> None:
    # Reading /proc/<executor>/environ from a step needs a non-root user to show (root reads anything),
    # so this checks the mechanism: after shielding, the process is not dumpable.
    code = (
        "import ctypes; from legato.executor.step_env import shield_executor_process\n"
        "libc = ctypes.CDLL(None); before = libc.prctl(3, 0, 0, 0, 0)\n"
        "shield_executor_process(); print(before, libc.prctl(3, 0, 0, 0, 0))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["1", "0"]
