"""Signatures that prove who sent a message: API requests (the actor) and work items (the scheduler).

A signature covers the subject, the body's SHA-256 and, for requests, a timestamp and a nonce, so it
cannot be moved to another subject, another body, or replayed outside a short window.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping

from legato.security.keyring import Identity
from legato.security.keys import Signer, Verifier

KEY = "Legato-Key"
TS = "Legato-Ts"
NONCE = "Legato-Nonce"
SIG = "Legato-Sig"
ORIGIN_KEY = "Legato-Origin-Key"
ORIGIN_SIG = "Legato-Origin-Sig"

REPLAY_WINDOW = 60.0  # seconds a signed request stays valid (clock skew both ways)
MAX_NONCES = 200_000


def _digest(*parts: bytes) -> bytes:
    return b"\n".join((*parts[:-1], hashlib.sha256(parts[-1]).hexdigest().encode()))


def sign_request(signer: Signer, subject: str, body: bytes) -> dict[str, str]:
    """The headers that sign an API request: key, time, nonce and the signature over them and the body."""
    ts = str(int(time.time() * 1000))
    nonce = os.urandom(12).hex()
    sig = signer.sign(_digest(ts.encode(), nonce.encode(), subject.encode(), body))
    return {KEY: signer.public_key, TS: ts, NONCE: nonce, SIG: sig}


class RequestRefused(Exception):
    """An API request whose signature, time or signer the trigger refuses; ``code`` says which."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RequestVerifier:
    """Maps a signed request to the identity that signed it; refuses unsigned, forged and replayed ones."""

    def __init__(self, users: Iterable[Identity], *, window: float = REPLAY_WINDOW) -> None:
        self.users = {u.public_key: (u, Verifier(u.public_key)) for u in users}
        self.window = window
        self._seen: OrderedDict[str, float] = OrderedDict()

    def verify(self, subject: str, body: bytes, headers: Mapping[str, str] | None) -> Identity:
        h = headers or {}
        key, ts, nonce, sig = h.get(KEY), h.get(TS), h.get(NONCE), h.get(SIG)
        if not (key and ts and nonce and sig):
            raise RequestRefused(
                "unauthenticated",
                "request is not signed: connect with credentials (LEGATO_NATS_CREDS or --creds)",
            )
        found = self.users.get(key)
        if found is None:
            raise RequestRefused("unauthenticated", f"unknown signing key {key[:12]}…")
        user, verifier = found
        try:
            sent = int(ts) / 1000.0
        except ValueError:
            raise RequestRefused("unauthenticated", f"{TS}: not a timestamp") from None
        now = time.time()
        if abs(now - sent) > self.window:
            raise RequestRefused(
                "unauthenticated",
                f"request signed {now - sent:.0f}s ago, outside the {self.window:.0f}s window",
            )
        if not verifier.verify(_digest(ts.encode(), nonce.encode(), subject.encode(), body), sig):
            raise RequestRefused("unauthenticated", "bad request signature")
        self._remember(f"{key}:{nonce}", now)
        return user

    def _remember(self, token: str, now: float) -> None:
        if token in self._seen:
            raise RequestRefused("unauthenticated", "replayed request (nonce already used)")
        self._seen[token] = now
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at <= self.window and len(self._seen) <= MAX_NONCES:
                break
            self._seen.pop(oldest)


# Who published a signal, as the publishing service claims it (the API's caller, or the run and step
# that published it). Believed only under a valid origin signature of a service (``SignalOrigins``).
PUBLISHER_CLAIMS = (
    "Legato-Publisher",
    "Legato-Publisher-Workflow",
    "Legato-Publisher-Instance",
    "Legato-Publisher-Step",
)
# Identities whose claims about a signal's publisher are believed (they publish for someone else).
VOUCHING_ROLES = ("trigger", "scheduler", "root")


def _claims(headers: Mapping[str, str]) -> bytes:
    return "\n".join(f"{k}={headers[k]}" for k in PUBLISHER_CLAIMS if headers.get(k)).encode()


def sign_signal(
    signer: Signer, subject: str, msg_id: str, body: bytes, headers: Mapping[str, str]
) -> dict[str, str]:
    """Origin headers for a signal: the signature covers the subject, the id, the publisher claims among
    ``headers`` and the body, so none of them can be changed or moved to another signal."""
    return {
        ORIGIN_KEY: signer.public_key,
        ORIGIN_SIG: signer.sign(_digest(subject.encode(), msg_id.encode(), _claims(headers), body)),
    }


class SignalOrigins:
    """The proven publisher of a stored signal (its lineage): the claims of a signal signed by a service,
    the signer's own name for one signed by anybody else, and nothing for an unsigned or forged one."""

    def __init__(self, users: Iterable[Identity]) -> None:
        self.users = {u.public_key: (u, Verifier(u.public_key)) for u in users}

    def publisher(self, subject: str, msg_id: str, body: bytes, headers: Mapping[str, str]) -> dict[str, str]:
        """The publisher claims to store (a subset of ``PUBLISHER_CLAIMS``), empty when none is proven."""
        key, sig = headers.get(ORIGIN_KEY), headers.get(ORIGIN_SIG)
        found = self.users.get(key) if key else None
        if found is None or not sig:
            return {}
        user, verifier = found
        if not verifier.verify(_digest(subject.encode(), msg_id.encode(), _claims(headers), body), sig):
            return {}
        if user.role in VOUCHING_ROLES:
            return {k: headers[k] for k in PUBLISHER_CLAIMS if headers.get(k)}
        return {"Legato-Publisher": user.name}


def sign_work(signer: Signer, subject: str, msg_id: str, body: bytes) -> dict[str, str]:
    """The headers that sign a work item: the scheduler's key and its signature over subject, id and body."""
    return {
        ORIGIN_KEY: signer.public_key,
        ORIGIN_SIG: signer.sign(_digest(subject.encode(), msg_id.encode(), body)),
    }


class WorkVerifier:
    """Accepts only work items signed by one of the schedulers' keys."""

    def __init__(self, schedulers: Iterable[Identity]) -> None:
        self.keys = {u.public_key: Verifier(u.public_key) for u in schedulers}

    def problem(
        self, subject: str, msg_id: str, body: bytes, headers: Mapping[str, str] | None
    ) -> str | None:
        """None when the item is the scheduler's; otherwise why it is refused."""
        h = headers or {}
        key, sig = h.get(ORIGIN_KEY), h.get(ORIGIN_SIG)
        if not key or not sig:
            return "untrusted work item: no scheduler signature"
        verifier = self.keys.get(key)
        if verifier is None:
            return f"untrusted work item: signed by {key[:12]}…, not a scheduler key"
        if not verifier.verify(_digest(subject.encode(), msg_id.encode(), body), sig):
            return "untrusted work item: bad scheduler signature"
        return None
