"""Keyring files, role table and signatures (the e2e attacks are in tests/e2e/test_security.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from legato.security.__main__ import main as security_main
from legato.security.keyring import Keyring, load_users
from legato.security.keys import KeyError_, Signer
from legato.security.permissions import may_call, role_permissions
from legato.security.signing import (
    ORIGIN_PATH,
    ORIGIN_SIG,
    TS,
    RequestRefused,
    RequestVerifier,
    WorkVerifier,
    sign_request,
    sign_work,
    sign_work_batch,
)


def test_keyring_files_are_private_and_kept(tmp_path: Path) -> None:
    ring = Keyring(tmp_path / "keys").ensure()
    assert (ring.folder.stat().st_mode & 0o777) == 0o700
    for user in ring.users():
        assert (ring.seed_file(user.name).stat().st_mode & 0o777) == 0o600
        assert Signer.from_file(ring.seed_file(user.name)).public_key == user.public_key
    before = ring.seed_file("admin").read_bytes()
    Keyring(tmp_path / "keys").ensure()
    assert ring.seed_file("admin").read_bytes() == before  # a second start reuses identities


def test_bad_users_file_names_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    path.write_text(json.dumps({"users": [{"name": "x", "role": "god", "public_key": "U"}]}))
    with pytest.raises(KeyError_, match=r"users\[0\]: role must be one of"):
        load_users(path)
    path.write_text(json.dumps({"users": [{"name": "x", "role": "admin", "public_key": "UABC"}]}))
    with pytest.raises(KeyError_, match="public key"):
        load_users(path)
    assert security_main(["nats-config", str(path)]) == 1


def test_role_table() -> None:
    assert may_call("viewer", "instance.get") and not may_call("viewer", "instance.stop")
    assert may_call("operator", "instance.stop") and may_call("operator", "signal.send")
    assert not may_call("operator", "workflow.push") and not may_call("operator", "tag.set")
    assert may_call("admin", "workflow.push") and may_call("admin", "some.future_endpoint")
    assert not may_call("operator", "some.future_endpoint")  # closed until opened
    assert not may_call("executor", "instance.get")
    executor = role_permissions("executor")["publish"]["allow"]
    assert not any(s.endswith(("legato.work.>", "legato.api.>")) for s in executor)
    assert "legato.work.>" in role_permissions("scheduler")["publish"]["allow"]


def test_request_signatures_bind_subject_body_time_and_nonce(tmp_path: Path) -> None:
    ring = Keyring(tmp_path / "keys").ensure()
    verifier = RequestVerifier(ring.users())
    signer = Signer.from_file(ring.seed_file("operator"))
    headers = sign_request(signer, "legato.api.instance.stop", b"{}")
    assert verifier.verify("legato.api.instance.stop", b"{}", headers).name == "operator"
    with pytest.raises(RequestRefused, match="replayed"):
        verifier.verify("legato.api.instance.stop", b"{}", headers)
    fresh = sign_request(signer, "legato.api.instance.stop", b"{}")
    with pytest.raises(RequestRefused, match="bad request signature"):
        verifier.verify("legato.api.instance.stop", b'{"x": 1}', fresh)
    old = {**sign_request(signer, "s", b""), TS: str(int((time.time() - 600) * 1000))}
    with pytest.raises(RequestRefused, match="outside"):
        verifier.verify("s", b"", old)
    stranger = Signer.from_file(Keyring(tmp_path / "other").ensure().seed_file("admin"))
    with pytest.raises(RequestRefused, match="unknown signing key"):
        verifier.verify("s", b"", sign_request(stranger, "s", b""))


def test_work_signatures(tmp_path: Path) -> None:
    ring = Keyring(tmp_path / "keys").ensure()
    check = WorkVerifier(u for u in ring.users() if u.role == "scheduler")
    scheduler = Signer.from_file(ring.seed_file("scheduler"))
    good = sign_work(scheduler, "legato.work.default", "att-1", b"body")
    assert check.problem("legato.work.default", "att-1", b"body", good) is None
    assert "bad scheduler signature" in (check.problem("legato.work.default", "att-1", b"other", good) or "")
    assert "no scheduler signature" in (check.problem("legato.work.default", "att-1", b"body", {}) or "")
    admin = sign_work(Signer.from_file(ring.seed_file("admin")), "legato.work.default", "att-1", b"body")
    assert "not a scheduler key" in (check.problem("legato.work.default", "att-1", b"body", admin) or "")


def test_work_batches_are_signed_once_and_each_item_checked_on_its_own(tmp_path: Path) -> None:
    """One signature over a Merkle root covers a relay batch: every item verifies with its own path, and
    no item can be altered, moved to another subject or id, or grafted onto another batch's root."""
    ring = Keyring(tmp_path / "keys").ensure()
    scheduler = Signer.from_file(ring.seed_file("scheduler"))
    items = [(f"legato.work.q{i % 2}", f"att-{i}", f"body {i}".encode()) for i in range(7)]
    signed = sign_work_batch(scheduler, items)
    assert len({h[ORIGIN_SIG] for h in signed}) == 1  # one signature for the batch
    check = WorkVerifier(u for u in ring.users() if u.role == "scheduler")
    for (subject, msg_id, body), headers in zip(items, signed, strict=True):
        assert check.problem(subject, msg_id, body, headers) is None
    # A fresh verifier (nothing cached) checks the signature itself.
    fresh = WorkVerifier(u for u in ring.users() if u.role == "scheduler")
    subject, msg_id, body = items[3]
    assert fresh.problem(subject, msg_id, body, signed[3]) is None
    # Altered body, another id, another subject, another item's path: refused, even with the root cached.
    for forged in (
        (subject, msg_id, b"rm -rf /", signed[3]),
        (subject, "att-99", body, signed[3]),
        ("legato.work.other", msg_id, body, signed[3]),
        (subject, msg_id, body, signed[4]),
    ):
        assert "bad scheduler signature" in (check.problem(*forged) or ""), forged
    # A path that is not one, and a path of another batch with this batch's signature.
    assert "malformed" in (check.problem(subject, msg_id, body, {**signed[3], ORIGIN_PATH: "AAAA"}) or "")
    other = sign_work_batch(scheduler, [("legato.work.q0", "att-x", b"x"), items[3]])
    assert check.problem(subject, msg_id, body, {**other[1], ORIGIN_SIG: signed[3][ORIGIN_SIG]}) is not None
    # A batch of one has an empty path and still verifies.
    (one,) = sign_work_batch(scheduler, [items[0]])
    assert fresh.problem(*items[0], one) is None
