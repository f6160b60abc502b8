"""Who may log in to the console, and as whom.

A login token names one identity of the keyring (``users.json``). The tokens file keeps only each token's
SHA-256 (a token is 32 random bytes: a fast hash is enough, nothing to brute-force), so reading the file
does not let anyone log in. Only identities with an API role (viewer, operator, admin) may log in, and
only those whose seed the console holds: it acts as them (``gateway``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from legato.security.keyring import API_ROLES, Identity, load_users

TOKEN_BYTES = 32


class LoginError(ValueError):
    """A token or tokens file is unusable; the message says which and why (never the token itself)."""


@dataclass(frozen=True)
class ConsoleUser:
    """The person behind a session: the keyring identity they act as, and its role."""

    name: str
    role: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def read_tokens(path: Path) -> dict[str, str]:
    """The tokens file as {sha256 hex: identity name}; empty when the file does not exist."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LoginError(f"tokens file {path}: cannot read it as JSON: {exc}") from None
    rows = data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise LoginError(f'tokens file {path}: expected {{"tokens": [{{"name", "sha256"}}, …]}}')
    out: dict[str, str] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("name", "sha256")):
            raise LoginError(f"tokens file {path}: tokens[{i}] needs string fields name and sha256")
        out[row["sha256"]] = row["name"]
    return out


def add_token(path: Path, name: str) -> str:
    """Create a login token for identity ``name``, store its hash in ``path`` (mode 0600), return it."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    rows = [{"name": n, "sha256": h} for h, n in read_tokens(path).items()]
    rows.append({"name": name, "sha256": _digest(token)})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps({"tokens": rows}, indent=2) + "\n")
    tmp.replace(path)
    return token


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
