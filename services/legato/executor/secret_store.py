"""Named secrets, resolved by the executor when a step runs, and masked in whatever the step reports.

A work item never carries a secret, only references (``{"$secret": "db_password"}``) in its params
and in a shell step's ``env``. The executor looks each name up, in order:

1. a file named after the secret in ``LEGATO_SECRETS_DIR`` (a mounted Kubernetes Secret: one file per
   key); one trailing newline is dropped;
2. the executor's own environment variable ``LEGATO_SECRET_<NAME>`` (upper-cased, ``.``/``-`` -> ``_``).

A step that names a secret the executor does not hold fails with an error naming the secret (never a
value). Every resolved value is replaced by ``***`` in the step's captured output, error and outputs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from legato.core.secrets import MASK, check_secret_name, secret_env_name, secret_name_of
from legato.executor.step_runner import StepFailed
from legato.protocol.messages import JSONValue

SECRETS_DIR_VAR = "LEGATO_SECRETS_DIR"
MAX_SECRET_BYTES = 64 * 1024
# Lines of a multi-line secret (a PEM key) are masked one by one too, when at least this long.
MIN_MASKED_LINE = 8


def secret_names(value: Any) -> Iterator[str]:
    """Every secret referenced inside a JSON value (params, a step's env)."""
    name = secret_name_of(value)
    if name is not None:
        yield name
    elif isinstance(value, dict):
        for v in value.values():
            yield from secret_names(v)
    elif isinstance(value, list):
        for v in value:
            yield from secret_names(v)


@dataclass(frozen=True)
class SecretStore:
    """Where this executor's secrets come from: a directory of files, then its environment."""

    directory: Path | None = None
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)

    @classmethod
    def from_environment(cls) -> SecretStore:
        folder = os.environ.get(SECRETS_DIR_VAR)
        return cls(directory=Path(folder) if folder else None)

    def lookup(self, name: str) -> str:
        """The secret's value; raises ``StepFailed`` naming the secret when it is not available."""
        problem = check_secret_name(name)
        if problem is not None:
            raise StepFailed(f"secret {name[:60]!r}: {problem}")
        value = self._from_file(name)
        if value is None:
            value = self.environ.get(secret_env_name(name))
        if value is None:
            where = f"a file {name!r} in ${SECRETS_DIR_VAR} or " if self.directory else ""
            raise StepFailed(
                f"secret {name!r} is not available to this executor "
                f"(provide {where}the environment variable {secret_env_name(name)})"
            )
        if "\0" in value:
            raise StepFailed(f"secret {name!r} contains a NUL byte")
        return value

    def _from_file(self, name: str) -> str | None:
        return read_named_file(self.directory, name, "secret")

    def resolve(self, *values: Any) -> ResolvedSecrets:
        """Look up every secret referenced in ``values``."""
        names = sorted({n for v in values for n in secret_names(v)})
        return ResolvedSecrets({name: self.lookup(name) for name in names})


def read_named_file(directory: Path | None, name: str, what: str) -> str | None:
    """The text of ``directory/name`` (one trailing newline dropped), None when there is no such file.

    Shared by secrets and named connections: both are one file per key of a mounted Kubernetes Secret.
    """
    if directory is None:
        return None
    path = directory / name
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SECRET_BYTES + 1)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    except OSError as exc:
        raise StepFailed(f"{what} {name!r}: cannot read its file: {exc.strerror}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise StepFailed(f"{what} {name!r} is larger than {MAX_SECRET_BYTES // 1024} KiB")
    text = data.decode("utf-8", errors="replace")
    return text[:-1] if text.endswith("\n") else text


@dataclass(frozen=True)
class ResolvedSecrets:
    """The secrets one attempt uses: name -> value. Knows how to put them in and mask them out."""

    values: dict[str, str] = field(default_factory=dict)

    def environment(self) -> dict[str, str]:
        """``LEGATO_SECRET_<NAME>`` per secret: what a shell command's ``${params.x}`` refers to."""
        return {secret_env_name(name): value for name, value in self.values.items()}

    def reveal(self, value: Any) -> Any:
        """``value`` with each secret reference replaced by the secret (for the step's own inputs)."""
        name = secret_name_of(value)
        if name is not None:
            return self.values[name]
        if isinstance(value, dict):
            return {k: self.reveal(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.reveal(v) for v in value]
        return value

    def _needles(self) -> list[str]:
        needles: set[str] = set()
        for value in self.values.values():
            if value:
                needles.add(value)
                needles.update(line for line in value.splitlines() if len(line.strip()) >= MIN_MASKED_LINE)
        # Longest first: a secret containing another is masked whole.
        return sorted(needles, key=len, reverse=True)

    def mask(self, text: str) -> str:
        """``text`` with every secret value replaced by ``***``."""
        for needle in self._needles():
            text = text.replace(needle, MASK)
        return text

    def mask_tail(self, text: str) -> str:
        """Like ``mask``, and also a secret's end at the very start of a cut-off tail."""
        text = self.mask(text)
        for needle in self._needles():
            for cut in range(len(needle) - 1, 0, -1):
                if text.startswith(needle[-cut:]):
                    return MASK + text[cut:]
        return text

    def mask_json(self, value: JSONValue) -> JSONValue:
        """Every string inside a JSON value masked (keys included)."""
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, dict):
            return {self.mask(k): self.mask_json(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.mask_json(v) for v in value]
        return value
