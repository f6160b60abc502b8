"""Named connections as this executor holds them (see :mod:`legato.core.connections`).

Looked up when a step runs, in order: a file named after the connection in ``LEGATO_CONNECTIONS_DIR``
(a mounted Kubernetes Secret), then the environment variable ``LEGATO_CONNECTION_<NAME>``. A step
naming a connection the executor does not hold fails naming the connection, never a value; the URL
and its password are masked in whatever the step reports.
"""

from __future__ import annotations

from dataclasses import dataclass

from legato.core.connections import (
    CONNECTION_ENV_PREFIX,
    CONNECTIONS_DIR_VAR,
    check_connection_name,
    credentials_in,
)
from legato.executor.named_values import NamedValueStore
from legato.executor.secret_store import ResolvedSecrets


@dataclass(frozen=True)
class Connection:
    """A resolved connection: its name, URL (credentials included) and what to mask in reports."""

    name: str
    url: str

    def masking(self) -> ResolvedSecrets:
        """Masks the URL and its password (the same way secret values are masked)."""
        parts = credentials_in(self.url)
        return ResolvedSecrets({f"connection:{self.name}:{i}": p for i, p in enumerate(parts)})


@dataclass(frozen=True)
class ConnectionStore(NamedValueStore):
    """Where this executor's connections come from: a directory of files, then its environment."""

    kind = "connection"
    dir_var = CONNECTIONS_DIR_VAR
    env_prefix = CONNECTION_ENV_PREFIX

    def check_name(self, name: str) -> str | None:
        """Why ``name`` cannot name a connection, or None when it can."""
        return check_connection_name(name)

    def lookup(self, name: str) -> Connection:
        """The named connection; raises ``StepFailed`` naming it when this executor does not hold it."""
        url = self.find(name)
        if url is None or not url.strip():
            raise self.missing(name)
        return Connection(name=name, url=url.strip())
