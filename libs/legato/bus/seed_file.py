"""Reading an nkey user seed from a creds or seed file (``LEGATO_NATS_CREDS``, a service's signing key).

The bus reads it to connect (and to derive its own inbox prefix); ``legato.security`` reads the same
files to sign requests. One reader, here on the lower floor, serves both.
"""

from __future__ import annotations

import os
from pathlib import Path


class SeedFileError(ValueError):
    """The seed file cannot be read or holds no nkey user seed; the message names the file."""


def read_seed(path: str | os.PathLike[str]) -> bytes:
    """The nkey user seed (the first line starting with ``SU``) in a creds or seed file."""
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise SeedFileError(f"cannot read nkey seed file {path}: {exc.strerror}") from None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(b"SU"):
            return line
    raise SeedFileError(f"{path}: no nkey user seed (a line starting with SU) in it")
