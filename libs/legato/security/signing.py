"""Signatures that prove who sent a message: API requests (the actor) and work items (the scheduler).

A signature covers the subject, the body's SHA-256 and, for requests, a timestamp and a nonce, so it
cannot be moved to another subject, another body, or replayed outside a short window.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence

from legato.security.keyring import Identity
from legato.security.keys import Signer, Verifier

KEY = "Legato-Key"
TS = "Legato-Ts"
NONCE = "Legato-Nonce"
SIG = "Legato-Sig"
ORIGIN_KEY = "Legato-Origin-Key"
ORIGIN_SIG = "Legato-Origin-Sig"
ORIGIN_PATH = "Legato-Origin-Path"

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


# Work items are signed a batch at a time: the scheduler's relay publishes hundreds of items per batch,
# and one ed25519 signature over the root of a Merkle tree of the batch's items replaces one per item.
# Each item carries the signature and its path to the root (33 bytes per level); an executor checks the
# path (a few SHA-256) and verifies each root's signature once. The tree's leaves and inner nodes are
# domain-separated, so no item can be passed off as an inner node or the other way round.
_WORK_ROOT = b"legato-work-batch-v1\n"
_LEAF = b"\x00"
_NODE = b"\x01"
_STEP = 33  # one side byte (L/R) and a sibling hash per tree level
MAX_TREE_DEPTH = 32
MAX_VERIFIED_ROOTS = 4096


def _work_leaf(subject: str, msg_id: str, body: bytes) -> bytes:
    return hashlib.sha256(
        b"".join((_LEAF, subject.encode(), b"\n", msg_id.encode(), b"\n", hashlib.sha256(body).digest()))
    ).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE + left + right).digest()


def _tree(leaves: list[bytes]) -> tuple[bytes, list[bytes]]:
    """The root of the leaves' Merkle tree and, per leaf, its path: (side, sibling) per level."""
    paths = [bytearray() for _ in leaves]
    positions = list(range(len(leaves)))
    level = list(leaves)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        for i, pos in enumerate(positions):
            sibling = pos ^ 1
            paths[i] += (b"L" if sibling < pos else b"R") + level[sibling]
            positions[i] = pos // 2
        level = [_node(level[k], level[k + 1]) for k in range(0, len(level), 2)]
    return level[0], [bytes(p) for p in paths]


def _fold(leaf: bytes, path: bytes) -> bytes | None:
    """The root a leaf and its path lead to; None for a malformed path."""
    if len(path) % _STEP or len(path) > _STEP * MAX_TREE_DEPTH:
        return None
    node = leaf
    for k in range(0, len(path), _STEP):
        side, sibling = path[k : k + 1], path[k + 1 : k + _STEP]
        if side == b"L":
            node = _node(sibling, node)
        elif side == b"R":
            node = _node(node, sibling)
        else:
            return None
    return node


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=") or "-"


def _unb64(text: str) -> bytes:
    return b"" if text == "-" else base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_work_batch(signer: Signer, items: Sequence[tuple[str, str, bytes]]) -> list[dict[str, str]]:
    """Origin headers for a batch of work items ``(subject, msg_id, body)``: one signature for all."""
    if not items:
        return []
    root, paths = _tree([_work_leaf(subject, msg_id, body) for subject, msg_id, body in items])
    sig = signer.sign(_WORK_ROOT + root)
    return [{ORIGIN_KEY: signer.public_key, ORIGIN_SIG: sig, ORIGIN_PATH: _b64(path)} for path in paths]


def sign_work(signer: Signer, subject: str, msg_id: str, body: bytes) -> dict[str, str]:
    """Origin headers for one work item (a batch of one)."""
    return sign_work_batch(signer, [(subject, msg_id, body)])[0]


class WorkVerifier:
    """Accepts only work items signed by one of the schedulers' keys."""

    def __init__(self, schedulers: Iterable[Identity]) -> None:
        self.keys = {u.public_key: Verifier(u.public_key) for u in schedulers}
        # Roots whose signature checked out, per key: the other items of a batch need only their path.
        self._verified: OrderedDict[tuple[str, bytes], None] = OrderedDict()

    def problem(
        self, subject: str, msg_id: str, body: bytes, headers: Mapping[str, str] | None
    ) -> str | None:
        """None when the item is the scheduler's; otherwise why it is refused."""
        h = headers or {}
        key, sig, path = h.get(ORIGIN_KEY), h.get(ORIGIN_SIG), h.get(ORIGIN_PATH)
        if not key or not sig or not path:
            return "untrusted work item: no scheduler signature"
        verifier = self.keys.get(key)
        if verifier is None:
            return f"untrusted work item: signed by {key[:12]}…, not a scheduler key"
        try:
            root = _fold(_work_leaf(subject, msg_id, body), _unb64(path))
        except ValueError:
            root = None
        if root is None:
            return "untrusted work item: malformed signature path"
        if (key, root) in self._verified:
            self._verified.move_to_end((key, root))
            return None
        if not verifier.verify(_WORK_ROOT + root, sig):
            return "untrusted work item: bad scheduler signature"
        self._verified[(key, root)] = None
        if len(self._verified) > MAX_VERIFIED_ROOTS:
            self._verified.popitem(last=False)
        return None
