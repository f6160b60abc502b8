"""Who may log in to the console, and as whom: a login token, or a name and password.

A login token names one identity of the keyring (``users.json``). The tokens file keeps only each token's
SHA-256 (a token is 32 random bytes: a fast hash is enough, nothing to brute-force), so reading the file
does not let anyone log in; a password is kept as scrypt with a salt. Only identities with an API role
(viewer, operator, admin) may log in, and only those whose seed the console holds: it acts as them
(``gateway``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from legato.security.keyring import API_ROLES, Identity, load_users

TOKEN_BYTES = 32
SCRYPT_N = 2**14  # scrypt cost: ~50 ms of one core per check
MIN_PASSWORD = 12


class LoginError(ValueError):
    """A token or tokens file is unusable; the message says which and why (never the token itself)."""


@dataclass(frozen=True)
class ConsoleUser:
    """The person behind a session: the keyring identity they act as, and its role."""

    name: str
    role: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LoginError(f"tokens file {path}: cannot read it as JSON: {exc}") from None
    if not isinstance(data, dict):
        raise LoginError(f'tokens file {path}: expected {{"tokens": [{{"name", "sha256"}}, …]}}')
    return data


def _rows(path: Path, data: dict[str, Any], key: str, fields: tuple[str, ...]) -> list[dict[str, str]]:
    rows = data.get(key, [])
    if not isinstance(rows, list):
        raise LoginError(f"tokens file {path}: {key} must be a list")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in fields):
            raise LoginError(f"tokens file {path}: {key}[{i}] needs string fields {' and '.join(fields)}")
    return rows


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def read_tokens(path: Path) -> dict[str, str]:
    """The tokens file's tokens as {sha256 hex: identity name}; empty when the file does not exist."""
    data = _read(path)
    return {row["sha256"]: row["name"] for row in _rows(path, data, "tokens", ("name", "sha256"))}


def add_token(path: Path, name: str) -> str:
    """Create a login token for identity ``name``, store its hash in ``path`` (mode 0600), return it."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    data = _read(path)
    data["tokens"] = [
        *_rows(path, data, "tokens", ("name", "sha256")),
        {"name": name, "sha256": _digest(token)},
    ]
    _write(path, data)
    return token


def _scrypt(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=8, p=1, dklen=32)


def set_password(path: Path, name: str, password: str) -> None:
    """Store a password for identity ``name`` (scrypt with a random salt; replaces an older one)."""
    if len(password) < MIN_PASSWORD:
        raise LoginError(f"password: at least {MIN_PASSWORD} characters")
    salt = secrets.token_bytes(16)
    data = _read(path)
    rows = [r for r in _rows(path, data, "passwords", ("name", "salt", "scrypt")) if r["name"] != name]
    rows.append({"name": name, "salt": salt.hex(), "scrypt": _scrypt(password, salt).hex()})
    data["passwords"] = rows
    _write(path, data)


class Logins:
    """Checks login tokens against the tokens file and the keyring; re-reads both on every login, so a
    token removed from the file or a user removed from ``users.json`` cannot log in again."""

    def __init__(self, tokens_file: Path, users_file: Path, keys_dir: Path) -> None:
        self.tokens_file = tokens_file
        self.users_file = users_file
        self.keys_dir = keys_dir

    def identity(self, name: str) -> Identity | None:
        """The keyring identity ``name`` if the console may act as it (API role, seed present)."""
        for user in load_users(self.users_file):
            if user.name == name and user.role in API_ROLES and (self.keys_dir / f"{name}.nk").is_file():
                return user
        return None

    def check(self, token: str) -> ConsoleUser | None:
        """The user a token logs in as, or None for an unknown token (compared in constant time)."""
        if not token or len(token) > 200:
            return None
        wanted = _digest(token)
        name = None
        for digest, who in read_tokens(self.tokens_file).items():
            if hmac.compare_digest(digest, wanted):
                name = who
        if name is None:
            return None
        user = self.identity(name)
        return ConsoleUser(user.name, user.role) if user is not None else None

    def check_password(self, name: str, password: str) -> ConsoleUser | None:
        """The user a name and password log in as, or None (slow on purpose: scrypt)."""
        if not name or not password or len(password) > 1000:
            return None
        data = _read(self.tokens_file)
        for row in _rows(self.tokens_file, data, "passwords", ("name", "salt", "scrypt")):
            if row["name"] == name:
                try:
                    salt, wanted = bytes.fromhex(row["salt"]), bytes.fromhex(row["scrypt"])
                except ValueError:
                    raise LoginError(
                        f"tokens file {self.tokens_file}: the password of {name} is not hex"
                    ) from None
                if hmac.compare_digest(_scrypt(password, salt), wanted):
                    user = self.identity(name)
                    return ConsoleUser(user.name, user.role) if user is not None else None
                return None
        _scrypt(password, b"\0" * 16)  # as slow for an unknown name: names do not leak by timing
        return None


class Throttle:
    """At most ``attempts`` failed password logins per name in ``window`` seconds (bounded memory)."""

    def __init__(self, attempts: int = 5, window: float = 300.0, max_names: int = 10_000) -> None:
        self.attempts = attempts
        self.window = window
        self.max_names = max_names
        self._failures: dict[str, list[float]] = {}

    def blocked(self, name: str, now: float) -> bool:
        """Whether ``name`` used up its attempts."""
        recent = [t for t in self._failures.get(name, []) if now - t < self.window]
        if recent:
            self._failures[name] = recent
        else:
            self._failures.pop(name, None)
        return len(recent) >= self.attempts

    def failed(self, name: str, now: float) -> None:
        """Count a failed attempt for ``name``."""
        if name not in self._failures and len(self._failures) >= self.max_names:
            self._failures.pop(next(iter(self._failures)))
        self._failures.setdefault(name, []).append(now)
