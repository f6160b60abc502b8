"""Named connections as this executor holds them (see :mod:`legato.core.connections`).

Looked up when a step runs, in order: a file named after the connection in ``LEGATO_CONNECTIONS_DIR``
(a mounted Kubernetes Secret), then the environment variable ``LEGATO_CONNECTION_<NAME>``. A step
naming a connection the executor does not hold fails naming the connection, never a value; the URL
and its password are masked in whatever the step reports.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from legato.core.connections import (
    CONNECTIONS_DIR_VAR,
    check_connection_name,
    connection_env_name,
    credentials_in,
)
from legato.executor.secret_store import ResolvedSecrets, read_named_file
from legato.executor.step_runner import StepFailed


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
class ConnectionStore:
    """Where this executor's connections come from: a directory of files, then its environment."""

    directory: Path | None = None
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)

    @classmethod
    def from_environment(cls) -> ConnectionStore:
        folder = os.environ.get(CONNECTIONS_DIR_VAR)
        return cls(directory=Path(folder) if folder else None)

    def lookup(self, name: str) -> Connection:
        """The named connection; raises ``StepFailed`` naming it when this executor does not hold it."""
        problem = check_connection_name(name)
        if problem is not None:
            raise StepFailed(f"connection {name[:60]!r}: {problem}")
        url = read_named_file(self.directory, name, "connection")
        if url is None:
            url = self.environ.get(connection_env_name(name))
        if url is None or not url.strip():
            where = f"a file {name!r} in ${CONNECTIONS_DIR_VAR} or " if self.directory else ""
            raise StepFailed(
                f"connection {name!r} is not available to this executor "
                f"(provide {where}the environment variable {connection_env_name(name)})"
            )
        return Connection(name=name, url=url.strip())
