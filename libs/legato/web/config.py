"""What ``legato web`` is configured with: where NATS is, whose keys it holds, where it listens."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from legato.config.settings import Settings


class WebConfigError(ValueError):
    """A setting of ``legato web`` is missing or malformed; the message names which and why."""


@dataclass(frozen=True, kw_only=True)
class WebConfig:
    """The console's settings (flags of ``legato web``, else ``LEGATO_WEB_*``, else ``.legato/dev.json``)."""

    settings: Settings  # NATS URL, namespace and TLS files of the bus
    keys_dir: Path  # users.json + the seeds (<name>.nk) of the identities people log in as
    tokens_file: Path  # login tokens (their SHA-256 only) -> identity name
    host: str = "127.0.0.1"
    port: int = 8765
    jaeger_url: str = ""  # e.g. http://jaeger:16686: run pages link to <jaeger_url>/trace/<trace id>
    session_secret: str = ""  # empty: a random one per process (sessions end on restart)
    secure_cookies: bool = True  # Secure flag; only an explicit --insecure-cookies drops it
    session_hours: float = 12.0

    @property
    def users_file(self) -> Path:
        return self.keys_dir / "users.json"

    @property
    def base_url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8765`` for IPv6) -> (host, port); an error naming the value otherwise."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise WebConfigError(f"--listen: expected HOST:PORT, got {text!r}")
    host = host.strip("[]") or "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise WebConfigError(f"--listen: host must be an IP address or localhost, got {host!r}") from None
    return host, int(port_text)
