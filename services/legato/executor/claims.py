"""Durable memory of attempts across executors and restarts, in a JetStream key-value bucket (no Postgres).

Before a step starts, its executor *claims* the attempt: a create of its key succeeds for exactly one
caller per attempt id, whatever the number of copies of the work item (a redelivery, an outbox
republish after JetStream's 2-minute duplicate window, a second executor). Only the claimant runs the
step. When the step's result cannot be published at once, the encoded result is written over the
claim while the publish is retried, so a later copy of the item — at any executor, after any restart —
publishes that same result instead of running the step again or reporting it lost. A result that
landed at once is not kept: the events stream holds it (``AttemptProcessor._publish_result``).

Entries expire after the bucket's TTL (``LEGATO_ATTEMPT_CLAIM_TTL``, 25 hours by default), which the
stateful services set and this module reads from the bucket (again every ``TTL_REFRESH`` seconds). A copy
of a work item can come long after the copy that ran (an outbox republish after a crash, an item waiting
in the stream while no executor runs): so that it always finds the claim, no work item runs later than
``horizon`` after its dispatch (``legato.bus.streams.claim_horizon``: the TTL less an hour for clock
differences); an older one is reported lost, not run (``AttemptProcessor``). Keys are a hash of the
attempt id, so any id is a valid key.

The create is what nats-py's ``KeyValue.create`` sends (a publish on the key's subject that JetStream
stores only while the key has no entry: ``Nats-Expected-Last-Subject-Sequence: 0``), sent through the
connection's PubAck inbox (``legato.bus.publisher.PubAckInbox``): about half the executor's CPU per
claim of nats-py's request path (``bench/claims.py``). When the key has an entry, ``KeyValue.create`` itself
decides, as it always did: it writes over a deleted key's marker and refuses a live entry.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
import uuid

import msgspec
from nats.js import JetStreamContext
from nats.js.api import Header
from nats.js.errors import APIError, BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from legato.bus.publisher import PubAckInbox
from legato.bus.streams import CLAIM_TTL, NotProvisioned, bucket_stream, claim_horizon, settled
from legato.telemetry import get_logger

log = get_logger("legato.executor")

KV_TIMEOUT = 5.0
# Results larger than this (256 KiB) are not kept in the bucket, which would grow too big over a TTL's
# worth of attempts; the claim still is: a later copy then finds the attempt started but without a
# result, as if its executor had been lost.
MAX_KEPT_RESULT = 256 * 1024
# How often the bucket's TTL is read again (a stateful service restarted with another
# LEGATO_ATTEMPT_CLAIM_TTL changes it in place).
TTL_REFRESH = 60.0
# JetStream's answers to a publish whose expected last subject sequence is not the subject's
# (JSStreamWrongLastSequenceErrF, JSStreamWrongLastSequenceConstantErr), as nats-py's KeyValue reads them.
WRONG_LAST_SEQUENCE = (10071, 10164)
_CREATE_ONLY = {Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: "0"}


class ClaimsUnavailable(RuntimeError):
    """The bucket could not be read or written; nothing may run until it can."""


class AttemptRecord(msgspec.Struct, frozen=True):
    """What the bucket holds for one attempt: who claimed it, and its encoded result once finished."""

    executor: str
    token: str
    claimed_at: float
    result: bytes | None = None


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(AttemptRecord)


def claim_key(attempt_id: str) -> str:
    """An attempt id as a KV key (its SHA-256: ids may hold characters keys may not)."""
    return hashlib.sha256(attempt_id.encode()).hexdigest()


class AttemptClaims:
    """Create-only claims and kept results per attempt id, in the bucket ``bucket``."""

    def __init__(
        self, js: JetStreamContext, bucket: str, *, replicas: int = 1, acks: PubAckInbox | None = None
    ) -> None:
        """``acks``: the connection's PubAck inbox to share (the executor's publisher's); by default
        one of the claims' own on ``js``'s connection."""
        self.js = js
        self.bucket = bucket
        self.replicas = replicas
        self.acks = acks if acks is not None else PubAckInbox(js._nc)
        self._kv: KeyValue | None = None
        self._subject_prefix = ""
        self.ttl = CLAIM_TTL
        self._ttl_read_at = -TTL_REFRESH

    async def open(self) -> None:
        """Bind to the bucket; waits, bounded, until it exists (stateful services create it:
        ``legato.bus.streams.provision_attempts_bucket``) and JetStream answers."""
        await settled(self._open, f"bucket {self.bucket}")

    async def _open(self) -> None:
        try:
            self._kv = await self.js.key_value(self.bucket)
        except BucketNotFoundError:
            raise NotProvisioned(f"bucket {self.bucket} does not exist yet") from None
        # The keys' subject prefix as nats-py's KeyValue publishes to it ("$KV.<bucket>.", or a
        # domain's); without one (another nats-py), claims go through ``KeyValue.create``.
        prefix = getattr(self._kv, "_pre", None)
        self._subject_prefix = prefix if isinstance(prefix, str) and prefix.endswith(".") else ""
        await self._read_ttl()

    async def _read_ttl(self) -> None:
        async with asyncio.timeout(KV_TIMEOUT):
            info = await self.js.stream_info(bucket_stream(self.bucket))
        # No max_age: claims are kept forever, and any work item may run however old.
        ttl = info.config.max_age or math.inf
        if ttl != self.ttl:
            log.info("attempt_claims_ttl", bucket=self.bucket, ttl=ttl, horizon=claim_horizon(ttl))
        self.ttl = ttl
        self._ttl_read_at = time.monotonic()

    async def horizon(self) -> float:
        """How long after its dispatch a work item may still run: the bucket's TTL, read at most a
        ``TTL_REFRESH`` ago, less the clock margin. If the bucket cannot be read, the last one read."""
        if time.monotonic() - self._ttl_read_at >= TTL_REFRESH:
            try:
                await self._read_ttl()
            except Exception as exc:
                self._ttl_read_at = time.monotonic()  # tried: not again for every item meanwhile
                log.warning("attempt_claims_ttl_unread", bucket=self.bucket, error=repr(exc))
        return claim_horizon(self.ttl)

    @property
    def kv(self) -> KeyValue:
        assert self._kv is not None, "AttemptClaims not opened"
        return self._kv

    async def claim(self, attempt_id: str, executor: str) -> AttemptRecord | None:
        """None if this caller now holds the attempt (run it); else the record of whoever does."""
        token = uuid.uuid4().hex
        mine = AttemptRecord(executor=executor, token=token, claimed_at=time.time())
        key = claim_key(attempt_id)
        try:
            async with asyncio.timeout(KV_TIMEOUT):
                await self._create(key, _ENCODER.encode(mine))
            return None
        except KeyWrongLastSequenceError:
            pass
        except Exception as exc:
            # The create may have landed with its answer lost: the token tells, below.
            log.warning("attempt_claim_uncertain", error=repr(exc))
        held = await self.get(attempt_id)
        if held is None:
            raise ClaimsUnavailable(f"claim of {attempt_id} neither written nor refused")
        return None if held.token == token else held

    async def _create(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key`` if the key has no entry; else ``KeyWrongLastSequenceError``."""
        if not self._subject_prefix:
            await self.kv.create(key, value)
            return
        try:
            await self.acks.publish(self._subject_prefix + key, value, _CREATE_ONLY)
        except APIError as exc:
            if exc.err_code not in WRONG_LAST_SEQUENCE:
                raise
            # The key has an entry: another copy's claim (refused again below), or the marker of a
            # deleted key, which KeyValue.create writes over (a claim nobody holds any more).
            await self.kv.create(key, value)

    async def get(self, attempt_id: str) -> AttemptRecord | None:
        try:
            async with asyncio.timeout(KV_TIMEOUT):
                entry = await self.kv.get(claim_key(attempt_id))
        except KeyNotFoundError:
            return None
        except Exception as exc:
            raise ClaimsUnavailable(f"attempt record of {attempt_id} unreadable: {exc!r}") from exc
        if entry.value is None:
            return None
        try:
            return _DECODER.decode(entry.value)
        except msgspec.DecodeError as exc:
            raise ClaimsUnavailable(f"attempt record of {attempt_id} is corrupt: {exc}") from exc

    async def keep_result(self, attempt_id: str, executor: str, payload: bytes) -> None:
        """Best effort: write the result over the claim (a failure only costs a later copy a rerun report)."""
        if len(payload) > MAX_KEPT_RESULT:
            return
        record = AttemptRecord(executor=executor, token="", claimed_at=time.time(), result=payload)
        try:
            async with asyncio.timeout(KV_TIMEOUT):
                await self.kv.put(claim_key(attempt_id), _ENCODER.encode(record))
        except Exception as exc:
            log.warning("attempt_result_not_kept", error=repr(exc))
