"""Named values an executor holds (secrets, connections): a file per name, then an environment variable.

Looked up when a step runs, in order: a file named after the value in the directory that ``dir_var``
names (a mounted Kubernetes Secret: one file per key; one trailing newline is dropped), then the
executor's own environment variable ``<env_prefix><NAME>`` (upper-cased, ``.``/``-`` -> ``_``). A
lookup that finds nothing fails naming the value, never showing one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Self

from legato.core.secrets import env_name_for
from legato.executor.step_runner import StepFailed

MAX_NAMED_VALUE_BYTES = 64 * 1024


@dataclass(frozen=True)
class NamedValueStore:
    """Where one kind of named value comes from: a directory of files, then the environment.

    A subclass names its kind: ``kind`` names the values in errors ("secret", "connection"),
    ``dir_var`` is the environment variable naming the directory, ``env_prefix`` starts each value's
    own variable, and ``check_name`` says why a name is malformed (or None)."""

    kind: ClassVar[str]
    dir_var: ClassVar[str]
    env_prefix: ClassVar[str]

    directory: Path | None = None
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)

    def check_name(self, name: str) -> str | None:
        """Why ``name`` cannot name a value of this kind, or None when it can."""
        raise NotImplementedError

    @classmethod
    def from_environment(cls) -> Self:
        """The store with its directory taken from ``dir_var`` in this process's environment."""
        folder = os.environ.get(cls.dir_var)
        return cls(directory=Path(folder) if folder else None)

    def env_name(self, name: str) -> str:
        """The environment variable that holds the value named ``name``."""
        return env_name_for(self.env_prefix, name)

    def find(self, name: str) -> str | None:
        """The value named ``name`` (its file first), None when neither source has it; raises
        ``StepFailed`` for a malformed name or an unreadable file."""
        problem = self.check_name(name)
        if problem is not None:
            raise StepFailed(f"{self.kind} {name[:60]!r}: {problem}")
        value = read_named_file(self.directory, name, self.kind)
        if value is None:
            value = self.environ.get(self.env_name(name))
        return value

    def missing(self, name: str) -> StepFailed:
        """The error for a value this executor does not hold, saying where to provide it."""
        where = f"a file {name!r} in ${self.dir_var} or " if self.directory else ""
        return StepFailed(
            f"{self.kind} {name!r} is not available to this executor "
            f"(provide {where}the environment variable {self.env_name(name)})"
        )


def read_named_file(directory: Path | None, name: str, what: str) -> str | None:
    """The text of ``directory/name`` (one trailing newline dropped), None when there is no such file."""
    if directory is None:
        return None
    path = directory / name
    try:
        with path.open("rb") as f:
            data = f.read(MAX_NAMED_VALUE_BYTES + 1)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    except OSError as exc:
        raise StepFailed(f"{what} {name!r}: cannot read its file: {exc.strerror}") from None
    if len(data) > MAX_NAMED_VALUE_BYTES:
        raise StepFailed(f"{what} {name!r} is larger than {MAX_NAMED_VALUE_BYTES // 1024} KiB")
    text = data.decode("utf-8", errors="replace")
    return text[:-1] if text.endswith("\n") else text
