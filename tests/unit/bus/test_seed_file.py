"""One seed-file reader serves the bus (its own inbox prefix) and security (signing)."""

from __future__ import annotations

from pathlib import Path

import nkeys
import pytest

from legato.bus.connection import own_inbox_prefix
from legato.bus.seed_file import SeedFileError, read_seed
from legato.security import KeyError_
from legato.security.keys import new_user_seed
from legato.security.keys import read_seed as security_read_seed


def test_the_seed_is_the_first_su_line_of_a_creds_file(tmp_path: Path) -> None:
    seed = new_user_seed()
    creds = tmp_path / "user.creds"
    creds.write_bytes(b"-----BEGIN USER NKEY SEED-----\n  " + seed + b"  \n------END------\n")
    assert read_seed(creds) == security_read_seed(creds) == seed
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    assert own_inbox_prefix(str(creds)) == f"_INBOX.{public}"


def test_a_missing_or_empty_or_bad_seed_file_is_named(tmp_path: Path) -> None:
    missing, empty, bad = tmp_path / "missing", tmp_path / "empty", tmp_path / "bad"
    empty.write_text("no seed here\n")
    bad.write_text("SUnot-a-seed\n")
    with pytest.raises(SeedFileError, match=f"cannot read nkey seed file {missing}"):
        read_seed(missing)
    with pytest.raises(KeyError_, match=f"{empty}: no nkey user seed"):
        security_read_seed(empty)
    with pytest.raises(ConnectionError, match=f"NATS credentials: cannot read nkey seed file {missing}"):
        own_inbox_prefix(str(missing))
    with pytest.raises(ConnectionError, match=f"NATS credentials: {empty}: no nkey user seed"):
        own_inbox_prefix(str(empty))
    with pytest.raises(ConnectionError, match=f"NATS credentials: no valid nkey user seed in {bad}"):
        own_inbox_prefix(str(bad))
