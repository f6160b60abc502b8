"""Named connections: a step says ``connection: warehouse``; only the executor holds its URL.

A connection is a URL with its credentials (``postgresql://user:password@host:5432/db``). It is never
in a definition, a param, Postgres, NATS, a log or an output: the executor reads it when a step runs,
from a file named after the connection in ``LEGATO_CONNECTIONS_DIR`` (a mounted Kubernetes Secret, one
key per connection) or from its environment variable ``LEGATO_CONNECTION_<NAME>``, exactly as named
secrets are read (:mod:`legato.core.secrets`).
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from legato.core.secrets import SECRET_NAME, env_name_for

CONNECTIONS_DIR_VAR = "LEGATO_CONNECTIONS_DIR"
CONNECTION_ENV_PREFIX = "LEGATO_CONNECTION_"
CONNECTION_NAME = SECRET_NAME


def connection_env_name(name: str) -> str:
    """``LEGATO_CONNECTION_<NAME>``: upper-cased, characters an env name cannot hold become ``_``."""
    return env_name_for(CONNECTION_ENV_PREFIX, name)


def check_connection_name(name: str) -> str | None:
    """Why ``name`` cannot name a connection, or None when it can."""
    if not CONNECTION_NAME.match(name):
        return "a connection name is a letter then up to 127 letters, digits, '_', '.' or '-'"
    return None


def connection_scheme(url: str) -> str:
    """The URL's scheme, lower-cased (``postgresql``), or "" when it has none."""
    return urlsplit(url.strip()).scheme.lower()


def credentials_in(url: str) -> list[str]:
    """The parts of a connection URL that must never be shown: the URL itself and its password."""
    parts = [url]
    try:
        password = urlsplit(url.strip()).password
    except ValueError:
        password = None
    if password:
        parts.extend({password, unquote(password)})
    return parts
