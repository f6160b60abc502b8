"""The console's login tokens, listen address and page helpers (no server needed)."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from legato.security.keyring import Keyring
from legato.web.app import graph_of, next_cron_fire, workflow_state
from legato.web.config import WebConfigError, parse_listen
from legato.web.logins import ConsoleUser, LoginError, Logins, Throttle, add_token, read_tokens, set_password


@pytest.fixture
def ring(tmp_path: Path) -> Keyring:
    return Keyring(tmp_path / "keys").ensure(
        (("alice", "operator"), ("bob", "viewer"), ("scheduler", "scheduler"))
    )


def test_a_token_logs_in_as_its_identity_with_its_role_and_only_its_hash_is_stored(ring: Keyring) -> None:
    tokens = ring.folder / "web-tokens.json"
    alice, bob = add_token(tokens, "alice"), add_token(tokens, "bob")
    logins = Logins(tokens, ring.users_file, ring.folder)
    assert logins.check(alice) == ConsoleUser("alice", "operator")
    assert logins.check(bob) == ConsoleUser("bob", "viewer")
    assert logins.check(alice + "x") is None and logins.check("") is None
    text = tokens.read_text()
    assert alice not in text and bob not in text
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600


def test_service_identities_removed_users_and_missing_seeds_cannot_log_in(ring: Keyring) -> None:
    tokens = ring.folder / "web-tokens.json"
    service = add_token(tokens, "scheduler")
    alice = add_token(tokens, "alice")
    bob = add_token(tokens, "bob")
    logins = Logins(tokens, ring.users_file, ring.folder)
    assert logins.check(service) is None  # a service identity is not a person
    ring.seed_file("alice").unlink()
    assert logins.check(alice) is None  # the console cannot act as alice without her seed
    users = json.loads(ring.users_file.read_text())
    users["users"] = [u for u in users["users"] if u["name"] != "bob"]
    ring.users_file.write_text(json.dumps(users))
    assert logins.check(bob) is None  # removed from users.json: logged out for good


def test_a_malformed_tokens_file_is_an_error_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "tokens.json"
    bad.write_text('{"tokens": [{"name": 1}]}')
    with pytest.raises(LoginError, match=r"tokens\.json: tokens\[0\] needs string fields"):
        read_tokens(bad)


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:8765") == ("127.0.0.1", 8765)
    assert parse_listen("[::1]:80") == ("::1", 80)
    for bad in ("8765", "host:80", "127.0.0.1:99999"):
        with pytest.raises(WebConfigError, match="--listen"):
            parse_listen(bad)


def test_fleet_state_next_cron_fire_and_run_graph() -> None:
    assert workflow_state({"active": True, "paused": False, "blocked_by": "r1"}) == "blocked by r1"
    assert workflow_state({"active": True, "paused": True}) == "paused"
    assert workflow_state({"active": False}) == "inactive"
    definition = {
        "triggers": [{"type": "cron", "cron": "0 3 * * *", "timezone": "UTC"}],
        "steps": [{"id": "a"}, {"id": "b", "depends_on": ["a"]}],
    }
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert next_cron_fire(definition, now) == datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
    graph = graph_of(
        definition, [{"step_id": "a", "status": "succeeded"}, {"step_id": "x", "status": "running"}]
    )
    assert graph["nodes"] == [
        {"id": "a", "type": None, "status": "succeeded"},
        {"id": "b", "type": None, "status": "pending"},
        {"id": "x", "type": "dynamic", "status": "running"},
    ]
    assert graph["edges"] == [["a", "b"]]


def test_legato_web_token_prints_a_working_token_and_refuses_who_cannot_log_in(
    ring: Keyring, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from legato.cli.main import main

    tokens = tmp_path / "tokens.json"
    assert main(["web", "--keys", str(ring.folder), "--tokens", str(tokens), "token", "alice"]) == 0
    out = capsys.readouterr().out
    token = out.split("login token for alice: ")[1].split()[0]
    assert f"/login?token={token}" in out
    assert Logins(tokens, ring.users_file, ring.folder).check(token) == ConsoleUser("alice", "operator")
    assert main(["web", "--keys", str(ring.folder), "--tokens", str(tokens), "token", "scheduler"]) == 2
    assert "not an identity" in capsys.readouterr().err
    assert main(["web", "--keys", str(tmp_path / "nowhere"), "token", "alice"]) == 2
    assert "no users.json" in capsys.readouterr().err


def test_a_password_logs_in_and_is_stored_as_salted_scrypt(ring: Keyring) -> None:
    tokens = ring.folder / "web-tokens.json"
    token = add_token(tokens, "bob")
    set_password(tokens, "alice", "correct horse battery")
    logins = Logins(tokens, ring.users_file, ring.folder)
    assert logins.check_password("alice", "correct horse battery") == ConsoleUser("alice", "operator")
    assert logins.check_password("alice", "correct horse batterY") is None
    assert logins.check_password("nobody", "correct horse battery") is None
    assert logins.check(token) == ConsoleUser("bob", "viewer")  # tokens kept beside passwords
    assert "correct horse" not in tokens.read_text()
    set_password(tokens, "alice", "another long passphrase")  # replaces the old one
    assert logins.check_password("alice", "correct horse battery") is None
    with pytest.raises(LoginError, match="at least 12 characters"):
        set_password(tokens, "alice", "short")


def test_failed_password_logins_are_throttled_per_name() -> None:
    throttle = Throttle(attempts=3, window=60.0, max_names=2)
    for t in (0.0, 1.0, 2.0):
        assert not throttle.blocked("alice", t)
        throttle.failed("alice", t)
    assert throttle.blocked("alice", 3.0) and not throttle.blocked("bob", 3.0)
    assert not throttle.blocked("alice", 61.0)  # the window passed
    for name in ("x", "y", "z"):
        throttle.failed(name, 70.0)
    assert len(throttle._failures) <= 2  # bounded memory
