"""Named secrets, resolved by the executor when a step runs, and masked in whatever the step reports.

A work item never carries a secret, only references (``{"$secret": "db_password"}``) in its params
and in a shell step's ``env``. The executor looks each name up, in order (``named_values.py``):

1. a file named after the secret in ``LEGATO_SECRETS_DIR`` (a mounted Kubernetes Secret: one file per
   key); one trailing newline is dropped;
2. the executor's own environment variable ``LEGATO_SECRET_<NAME>`` (upper-cased, ``.``/``-`` -> ``_``).

A step that names a secret the executor does not hold fails with an error naming the secret (never a
value). Every resolved value is replaced by ``***`` in the step's captured output, error and outputs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from legato.core.secrets import MASK, SECRET_ENV_PREFIX, check_secret_name, secret_env_name, secret_name_of
from legato.executor.named_values import NamedValueStore
from legato.executor.step_runner import StepFailed
from legato.protocol.messages import JSONValue

SECRETS_DIR_VAR = "LEGATO_SECRETS_DIR"
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
class SecretStore(NamedValueStore):
    """Where this executor's secrets come from: a directory of files, then its environment."""

    kind = "secret"
    dir_var = SECRETS_DIR_VAR
    env_prefix = SECRET_ENV_PREFIX

    def check_name(self, name: str) -> str | None:
        """Why ``name`` cannot name a secret, or None when it can."""
        return check_secret_name(name)

    def lookup(self, name: str) -> str:
        """The secret's value; raises ``StepFailed`` naming the secret when it is not available."""
        value = self.find(name)
        if value is None:
            raise self.missing(name)
        if "\0" in value:
            raise StepFailed(f"secret {name!r} contains a NUL byte")
        return value

    def resolve(self, *values: Any) -> ResolvedSecrets:
        """Look up every secret referenced in ``values``."""
        names = sorted({n for v in values for n in secret_names(v)})
        return ResolvedSecrets({name: self.lookup(name) for name in names})


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

    def mask_outputs(self, outputs: Mapping[str, JSONValue]) -> dict[str, JSONValue]:
        """A step's outputs with every string masked (``mask_json`` of each value)."""
        return {k: self.mask_json(v) for k, v in outputs.items()}

    def mask_failure(self, exc: StepFailed) -> StepFailed:
        """The same failure with its error and outputs masked."""
        return StepFailed(
            self.mask(exc.error), exit_code=exc.exit_code, outputs=self.mask_outputs(exc.outputs)
        )

    def mask_json(self, value: JSONValue) -> JSONValue:
        """Every string inside a JSON value masked (keys included)."""
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, dict):
            return {self.mask(k): self.mask_json(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.mask_json(v) for v in value]
        return value
