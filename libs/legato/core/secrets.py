"""Secret references: what a ``secret`` param holds instead of the secret itself.

A run param of type ``secret`` takes a secret's *name* (``db_password``) and holds the reference
``{"$secret": "db_password"}``. Only that reference is stored, published and shown; the executor
resolves it at run time from its own secret store (``LEGATO_SECRET_<NAME>`` variables or files in
``LEGATO_SECRETS_DIR``, e.g. a mounted Kubernetes Secret) and masks the value in whatever the step
reports back.
"""

from __future__ import annotations

import re
from typing import Any

SECRET_KEY = "$secret"
SECRET_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,127}$")
MASK = "***"


def secret_ref(name: str) -> dict[str, str]:
    """The reference a ``secret`` param holds."""
    return {SECRET_KEY: name}


def secret_name_of(value: Any) -> str | None:
    """The secret's name when ``value`` is a secret reference, else None."""
    if isinstance(value, dict) and len(value) == 1:
        name = value.get(SECRET_KEY)
        if isinstance(name, str):
            return name
    return None


SECRET_ENV_PREFIX = "LEGATO_SECRET_"


def env_name_for(prefix: str, name: str) -> str:
    """``<prefix><NAME>``: the name upper-cased, characters an env name cannot hold become ``_``."""
    return prefix + re.sub(r"[^A-Z0-9_]", "_", name.upper())


def secret_env_name(name: str) -> str:
    """``LEGATO_SECRET_<NAME>``: upper-cased, characters an env name cannot hold become ``_``."""
    return env_name_for(SECRET_ENV_PREFIX, name)


def check_secret_name(name: str) -> str | None:
    """Why ``name`` cannot name a secret, or None when it can."""
    if not SECRET_NAME.match(name):
        return (
            "a secret name is a letter then up to 127 letters, digits, '_', '.' or '-'"
            f" (got {len(name)} characters)"
        )
    return None
