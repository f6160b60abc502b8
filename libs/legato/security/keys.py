"""nkey (ed25519) seeds and public keys: the same keys nats-server authenticates connections with."""

from __future__ import annotations

import base64
import os

import nacl.exceptions
import nacl.signing
import nkeys

from legato.bus import seed_file


class KeyError_(ValueError):
    """A seed or public key is malformed or unreadable; the message names which."""


def new_user_seed() -> bytes:
    """A fresh nkey user seed (``SU…``)."""
    raw = bytes(nacl.signing.SigningKey.generate())
    seed: bytes = nkeys.encode_seed(raw, nkeys.PREFIX_BYTE_USER)
    return seed


def read_seed(path: str | os.PathLike[str]) -> bytes:
    """The nkey user seed in a creds or seed file; a ``KeyError_`` naming the file when there is none."""
    try:
        return seed_file.read_seed(path)
    except seed_file.SeedFileError as exc:
        raise KeyError_(str(exc)) from None


def _raw_public(public_key: str) -> bytes:
    try:
        data = base64.b32decode(public_key + "=" * (-len(public_key) % 8))
    except (ValueError, TypeError):
        raise KeyError_(f"not an nkey public key: {public_key[:60]!r}") from None
    if len(data) != 35 or data[0] != nkeys.PREFIX_BYTE_USER:
        raise KeyError_(f"not an nkey user public key (U…): {public_key[:60]!r}")
    if nkeys.crc16_checksum(data[:-2]) != data[-2:]:
        raise KeyError_(f"nkey public key has a bad checksum: {public_key[:60]!r}")
    return data[1:33]


class Signer:
    """Signs with one identity's seed."""

    def __init__(self, seed: bytes) -> None:
        try:
            self._kp = nkeys.from_seed(bytearray(seed))
        except Exception as exc:
            raise KeyError_(f"invalid nkey seed: {type(exc).__name__}") from None
        self.public_key: str = self._kp.public_key.decode()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Signer:
        return cls(read_seed(path))

    def sign(self, data: bytes) -> str:
        sig: bytes = self._kp.sign(data)
        return base64.urlsafe_b64encode(sig).decode().rstrip("=")


class Verifier:
    """Checks signatures made by one public key."""

    def __init__(self, public_key: str) -> None:
        self.public_key = public_key
        self._key = nacl.signing.VerifyKey(_raw_public(public_key))

    def verify(self, data: bytes, signature: str) -> bool:
        try:
            sig = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
            self._key.verify(data, sig)
        except (ValueError, TypeError, nacl.exceptions.BadSignatureError):
            return False
        return True
