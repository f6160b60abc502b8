"""Connecting to NATS with reconnect handling and logged connection events.

Every connection of every service, the CLI and the client goes through ``nats_auth_options``: the nkey
seed file (``LEGATO_NATS_CREDS``) and TLS files (``LEGATO_NATS_TLS_*``) come from Settings, or, when a
caller passes none, from the environment — so one configuration reaches every process.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from typing import TYPE_CHECKING, Any

import nats
import nats.errors
import nkeys
from nats.aio.client import Client

from legato.bus.seed_file import SeedFileError, read_seed
from legato.telemetry import get_logger

if TYPE_CHECKING:
    from legato.config.settings import Settings

INBOX_ROOT = "_INBOX"  # every reply subject starts here; each identity gets its own prefix below it
log = get_logger("legato.bus")


def tls_context(ca: str = "", cert: str = "", key: str = "") -> ssl.SSLContext | None:
    """A client TLS context verifying the server against ``ca`` (system CAs if empty), presenting
    ``cert``/``key`` when given (mutual TLS); None when no TLS file is configured."""
    if not (ca or cert):
        return None
    ctx = ssl.create_default_context(cafile=ca or None)
    if cert:
        ctx.load_cert_chain(cert, key or None)
    return ctx


def own_inbox_prefix(seed_file: str) -> str:
    """``_INBOX.<public key>``: the inbox prefix of the identity whose nkey seed is in ``seed_file``."""
    try:
        public: bytes = nkeys.from_seed(bytearray(read_seed(seed_file))).public_key
    except SeedFileError as exc:
        raise ConnectionError(f"NATS credentials: {exc}") from None
    except Exception:
        raise ConnectionError(f"NATS credentials: no valid nkey user seed in {seed_file}") from None
    return f"{INBOX_ROOT}.{public.decode()}"


def nats_auth_options(
    settings: Settings | None = None, *, creds: str | None = None, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """``nats.connect`` keyword arguments for credentials and TLS (explicit > settings > environment)."""
    environ = os.environ if env is None else env

    def pick(field: str, var: str) -> str:
        value = getattr(settings, field, "") if settings is not None else ""
        return str(value or environ.get(var, ""))

    seed = creds if creds is not None else pick("nats_creds", "LEGATO_NATS_CREDS")
    opts: dict[str, Any] = {}
    if seed:
        if not os.path.isfile(seed):
            raise ConnectionError(f"NATS credentials: no nkey seed file at {seed} (LEGATO_NATS_CREDS)")
        opts["nkeys_seed"] = seed
        # Replies come back under this identity's own inbox prefix, the only one its permissions let it
        # subscribe to: nobody else can read them (legato.security.permissions).
        opts["inbox_prefix"] = own_inbox_prefix(seed)
    ctx = tls_context(
        pick("nats_tls_ca", "LEGATO_NATS_TLS_CA"),
        pick("nats_tls_cert", "LEGATO_NATS_TLS_CERT"),
        pick("nats_tls_key", "LEGATO_NATS_TLS_KEY"),
    )
    if ctx is not None:
        opts["tls"] = ctx
    return opts


async def connect_with(settings: Settings, *, name: str, connect_timeout: float = 5.0) -> Client:
    """``connect`` with the URL, credentials and TLS of ``settings``."""
    return await connect(
        settings.nats_url, name=name, connect_timeout=connect_timeout, options=nats_auth_options(settings)
    )


async def connect(
    url: str, *, name: str, connect_timeout: float = 5.0, options: dict[str, Any] | None = None
) -> Client:
    """Connect with unbounded reconnects (a service rides out a NATS restart) and logged transitions.

    The first connection is bounded: a wrong URL is one clear error at start, not an endless retry loop.
    """
    state = {"connected": False}
    first_errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        if state["connected"]:
            log.warning("nats_error", error=repr(exc))
        elif len(first_errors) < 16:
            first_errors.append(exc)  # before the first connection: reported once, below

    async def on_disconnected() -> None:
        log.warning("nats_disconnected")

    async def on_reconnected() -> None:
        log.info("nats_reconnected", url=url)

    async def on_closed() -> None:
        log.info("nats_closed")

    try:
        nc = await asyncio.wait_for(
            _connect(
                url,
                name,
                connect_timeout,
                on_error,
                on_disconnected,
                on_reconnected,
                on_closed,
                nats_auth_options() if options is None else options,
            ),
            timeout=connect_timeout + 2.0,
        )
    except TimeoutError:
        raise ConnectionError(f"cannot connect to NATS at {url}: {_why(first_errors)}") from None
    except nats.errors.Error as exc:
        raise ConnectionError(f"cannot connect to NATS at {url}: {exc}") from None
    state["connected"] = True
    return nc


def _why(errors: list[Exception]) -> str:
    """The error that explains a failed first connection: the server's refusal (an authorization
    violation) rather than the connection reset that follows it, else the last error seen."""
    if not errors:
        return "no answer"
    for exc in errors:
        if "authorization" in str(exc).lower():
            return str(exc)
    return repr(errors[-1])


async def _connect(
    url: str,
    name: str,
    connect_timeout: float,
    on_error: Any,
    on_disconnected: Any,
    on_reconnected: Any,
    on_closed: Any,
    options: dict[str, Any],
) -> Client:
    nc: Client = await nats.connect(
        # A comma-separated list seeds the client with several cluster members; it learns the rest.
        servers=[u.strip() for u in url.split(",") if u.strip()],
        name=name,
        connect_timeout=connect_timeout,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
        closed_cb=on_closed,
        # The client buffers publishes while reconnecting; bounded so memory cannot grow without limit.
        pending_size=64 * 1024 * 1024,
        **options,
    )
    return nc
