"""How services pick up identities from Settings: the scheduler's work signer, the executor's work
check, the trigger's request verifier. Each is None when no credentials are configured, which a service
allows only with LEGATO_INSECURE=1 (``Settings.credentials_problem``), and warns about at start."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from legato.bus.consumer import Delivery, Poison
from legato.bus.publisher import MSG_ID_HEADER, OutgoingMessage
from legato.security.keyring import load_users
from legato.security.keys import Signer
from legato.security.signing import RequestVerifier, SignalOrigins, WorkVerifier, sign_signal, sign_work_batch
from legato.telemetry import get_logger

if TYPE_CHECKING:
    from legato.bus.topology import Topology
    from legato.config.settings import Settings

log = get_logger("legato.security")
T = TypeVar("T")


def origin_signer(
    settings: Settings, topology: Topology
) -> Callable[[Sequence[OutgoingMessage]], list[Mapping[str, str]]] | None:
    """Signs with this process's own seed what it publishes to ``legato.work.>`` (work items, a batch
    under one signature: only the scheduler may publish them) and to ``legato.signal.>`` (signals,
    with the publisher they claim). Other messages get no origin headers."""
    if not settings.nats_creds:
        log.warning("messages_unsigned", reason="no LEGATO_NATS_CREDS: running without credentials")
        return None
    signer = Signer.from_file(settings.nats_creds)
    work = topology.subject_prefix("work")
    signal = topology.signal_prefix

    def sign(msgs: Sequence[OutgoingMessage]) -> list[Mapping[str, str]]:
        out: list[Mapping[str, str]] = [{}] * len(msgs)
        batch = [i for i, m in enumerate(msgs) if m.subject.startswith(work)]
        if batch:
            signed = sign_work_batch(
                signer, [(msgs[i].subject, msgs[i].msg_id or "", msgs[i].payload) for i in batch]
            )
            for i, headers in zip(batch, signed, strict=True):
                out[i] = headers
        for i, m in enumerate(msgs):
            if m.subject.startswith(signal):
                out[i] = sign_signal(signer, m.subject, m.msg_id or "", m.payload, m.headers or {})
        return out

    return sign


def work_verifier(settings: Settings) -> WorkVerifier | None:
    """What the executor checks work items with: the scheduler and root keys of the users file (None
    without one)."""
    if not settings.auth_users:
        log.warning("work_items_unverified", reason="no LEGATO_AUTH_USERS: running without credentials")
        return None
    # root may publish anything anyway (break-glass, and tests running a scheduler in-process).
    return WorkVerifier(u for u in load_users(settings.auth_users) if u.role in ("scheduler", "root"))


def signal_origins(settings: Settings) -> SignalOrigins | None:
    """The signal router's check of who published a signal (None: claims are stored as sent)."""
    if not settings.auth_users:
        log.warning(
            "signal_publishers_unverified", reason="no LEGATO_AUTH_USERS: running without credentials"
        )
        return None
    return SignalOrigins(load_users(settings.auth_users))


def request_verifier(settings: Settings) -> RequestVerifier | None:
    """What the trigger checks API requests with: every user of the users file (None without one)."""
    if not settings.auth_users:
        log.warning("api_unauthenticated", reason="no LEGATO_AUTH_USERS: any caller is trusted")
        return None
    return RequestVerifier(load_users(settings.auth_users))


def trusted_work(
    handler: Callable[[Delivery[T]], Awaitable[None]], verifier: WorkVerifier | None
) -> Callable[[Delivery[T]], Awaitable[None]]:
    """The executor's handler, behind a check that the item is the scheduler's: anything else is
    refused before it runs and dead-lettered with the reason (``Poison``)."""
    if verifier is None:
        return handler

    async def checked(delivery: Delivery[T]) -> None:
        raw: Any = delivery.raw
        why = verifier.problem(
            delivery.subject, delivery.headers.get(MSG_ID_HEADER, ""), raw.data, delivery.headers
        )
        if why is not None:
            log.error("work_item_refused", subject=delivery.subject, reason=why)
            raise Poison(why)
        await handler(delivery)

    return checked
