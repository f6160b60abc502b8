"""A keyring folder: ``users.json`` (name, role and public key of every identity; not secret) and one
nkey seed file per identity it generated (``<name>.nk``, mode 0600; secret).

nats-server's ``authorization`` block, the trigger's request verification and the executor's work-item
verification all read the same ``users.json``; each process holds only its own seed.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from legato.security.keys import KeyError_, Signer, Verifier, new_user_seed

SERVICE_ROLES = ("trigger", "scheduler", "executor", "signal_router")
API_ROLES = ("viewer", "operator", "admin")
# publisher: may publish signals and nothing else; root: the whole bus (tests, break-glass operations).
ROLES = (*SERVICE_ROLES, *API_ROLES, "publisher", "root")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
USERS_FILE = "users.json"

# What `legato dev` and the test suite generate: each service, plus one user per API role.
DEFAULT_IDENTITIES: tuple[tuple[str, str], ...] = (
    ("trigger", "trigger"),
    ("scheduler", "scheduler"),
    ("executor", "executor"),
    ("signal_router", "signal_router"),
    ("admin", "admin"),
    ("operator", "operator"),
    ("viewer", "viewer"),
    ("publisher", "publisher"),
)


@dataclass(frozen=True)
class Identity:
    """A named public key with its role: who may sign requests or work items."""

    name: str
    role: str
    public_key: str


def _check(identity: Identity, where: str) -> Identity:
    if not NAME.fullmatch(identity.name):
        raise KeyError_(f"{where}: name must be letters, digits, _ . @ -, got {identity.name!r}")
    if identity.role not in ROLES:
        raise KeyError_(f"{where}: role must be one of {', '.join(ROLES)}, got {identity.role!r}")
    Verifier(identity.public_key)  # raises on a malformed key
    return identity


def load_users(path: str | os.PathLike[str]) -> list[Identity]:
    """The identities in a ``users.json``; a malformed entry is one error naming it."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise KeyError_(f"cannot read users file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise KeyError_(f"{path}: not JSON: {exc}") from None
    entries = data.get("users") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise KeyError_(f'{path}: expected {{"users": [{{"name", "role", "public_key"}}, …]}}')
    out: list[Identity] = []
    for i, e in enumerate(entries):
        where = f"{path}: users[{i}]"
        if not isinstance(e, dict) or not all(
            isinstance(e.get(k), str) for k in ("name", "role", "public_key")
        ):
            raise KeyError_(f"{where}: needs string fields name, role, public_key")
        out.append(_check(Identity(e["name"], e["role"], e["public_key"]), where))
    names = [u.name for u in out]
    keys = [u.public_key for u in out]
    if len(set(names)) != len(names) or len(set(keys)) != len(keys):
        raise KeyError_(f"{path}: names and public keys must be unique")
    return out


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


class Keyring:
    """A folder of identities; ``ensure`` creates missing ones and never replaces an existing seed."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    @property
    def users_file(self) -> Path:
        return self.folder / USERS_FILE

    def seed_file(self, name: str) -> Path:
        return self.folder / f"{name}.nk"

    def users(self) -> list[Identity]:
        return load_users(self.users_file)

    def ensure(self, identities: tuple[tuple[str, str], ...] = DEFAULT_IDENTITIES) -> Keyring:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.folder.chmod(0o700)
        known = {u.name: u for u in self.users()} if self.users_file.exists() else {}
        for name, role in identities:
            seed_path = self.seed_file(name)
            if name in known and seed_path.exists():
                continue
            seed = new_user_seed()
            _write_private(seed_path, seed + b"\n")
            known[name] = Identity(name, role, Signer(seed).public_key)
        body = {
            "users": [{"name": u.name, "role": u.role, "public_key": u.public_key} for u in known.values()]
        }
        tmp = self.users_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, indent=2) + "\n")
        tmp.replace(self.users_file)
        return self
