"""The ``dead_letter.*`` API: list, show, replay and discard the messages consumers gave up on.

A dead letter keeps the raw message, its headers, the last error and the delivery count. Replay is
idempotent: it sets ``replayed_at`` and queues the original message in the outbox in one transaction,
published with ``Nats-Msg-Id: replay:dead-letter:<id>``, so replaying twice (or two operators at once)
republishes once. Registered beside the other endpoints by ``api.py``.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import asyncpg
from nats.aio.client import Client

from legato.bus.publisher import MSG_ID_HEADER, OutgoingMessage
from legato.protocol import api
from legato.protocol.api import ApiError
from legato.protocol.replies import DeadLetterDetail, DeadLetterInfo, DeadLetterPage, DeadLetterReplayed
from legato.store.outbox import add_to_outbox
from legato.telemetry import get_logger
from legato.trigger.endpoints import Endpoint, typed
from legato.trigger.instances import iso
from legato.trigger.replies import fit, reply_budget, size_of, truncated

log = get_logger("legato.trigger")

REPLAY_HEADER = "Legato-Replay-Of"


def is_work_item(subject: str) -> bool:
    """``[<namespace>.]legato.work.<queue>``: an attempt the scheduler issued and signed."""
    return subject.startswith("legato.work.") or ".legato.work." in subject


COLUMNS = (
    "id, stream, consumer, subject, stream_seq, msg_id, headers, payload, error, deliveries, created_at, "
    "replayed_at, replayed_by, discarded_at, discarded_by"
)


def replay_msg_id(dead_letter_id: int) -> str:
    return f"replay:dead-letter:{dead_letter_id}"


def _summary(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": r["id"],
        "stream": r["stream"],
        "consumer": r["consumer"],
        "subject": r["subject"],
        "stream_seq": r["stream_seq"],
        "msg_id": r["msg_id"],
        "error": truncated(r["error"], 1000),
        "deliveries": r["deliveries"],
        "payload_bytes": len(r["payload"]),
        "created_at": iso(r["created_at"]),
        "replayed_at": iso(r["replayed_at"]),
        "replayed_by": r["replayed_by"],
        "discarded_at": iso(r["discarded_at"]),
        "discarded_by": r["discarded_by"],
    }


class DeadLetterApi:
    """Handlers of ``dead_letter.list|get|replay|discard``."""

    def __init__(self, nc: Client, pool: asyncpg.Pool, *, wake_relay: Callable[[], None]) -> None:
        self.nc = nc
        self.pool = pool
        self.wake_relay = wake_relay

    def endpoints(self) -> dict[str, Endpoint]:
        return {
            "dead_letter.list": (api.ListDeadLetters, typed(self.list, DeadLetterPage)),
            "dead_letter.get": (api.GetDeadLetter, typed(self.get, DeadLetterDetail)),
            "dead_letter.replay": (api.DeadLetterRef, typed(self.replay, DeadLetterReplayed)),
            "dead_letter.discard": (api.DeadLetterRef, typed(self.discard, DeadLetterInfo)),
        }

    async def list(self, req: api.ListDeadLetters) -> dict[str, Any]:
        limit = max(1, min(req.limit, 1000))
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT {COLUMNS} FROM dead_letter WHERE ($1::bigint IS NULL OR id < $1) "
                "AND ($2 OR (discarded_at IS NULL AND replayed_at IS NULL)) ORDER BY id DESC LIMIT $3",
                req.before,
                req.include_done,
                limit + 1,
            )
        page = fit(rows[:limit], reply_budget(self.nc), _summary)
        more = len(page) < len(rows)
        return {"dead_letters": page, "next": page[-1]["id"] if more and page else None}

    async def _row(
        self, conn: asyncpg.Connection, dead_letter_id: int, *, lock: bool = False
    ) -> asyncpg.Record:
        r = await conn.fetchrow(
            f"SELECT {COLUMNS} FROM dead_letter WHERE id = $1" + (" FOR UPDATE" if lock else ""),
            dead_letter_id,
        )
        if r is None:
            raise ApiError("not_found", f"unknown dead letter {dead_letter_id}", {"id": dead_letter_id})
        return r

    async def get(self, req: api.GetDeadLetter) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            r = await self._row(conn, req.id)
        out = {**_summary(r), "error": r["error"], "headers": truncated(r["headers"])}
        # The raw message: as text when it is UTF-8 and fits, else base64 parts cut to the reply budget
        # (``payload_next_offset`` asks for the next part).
        payload: bytes = r["payload"]
        offset = max(0, req.payload_offset)
        if offset > len(payload):
            raise ApiError("bad_request", f"payload_offset: beyond the message's {len(payload)} bytes")
        room = reply_budget(self.nc) - size_of(out) - 256
        if offset == 0:
            try:
                text = payload.decode()
                if size_of(text) <= room:
                    return {
                        **out,
                        "payload": text,
                        "payload_encoding": "utf-8",
                        "payload_offset": 0,
                        "payload_next_offset": None,
                        "payload_truncated": False,
                    }
            except UnicodeDecodeError:
                pass
        end = offset + max(1, room * 3 // 4)
        part = payload[offset:end]
        return {
            **out,
            "payload": base64.b64encode(part).decode(),
            "payload_encoding": "base64",
            "payload_offset": offset,
            "payload_next_offset": end if end < len(payload) else None,
            "payload_truncated": offset > 0 or end < len(payload),
        }

    async def replay(self, req: api.DeadLetterRef) -> dict[str, Any]:
        async with self.pool.acquire() as conn, conn.transaction():
            r = await self._row(conn, req.id, lock=True)
            if r["discarded_at"] is not None:
                raise ApiError(
                    "not_applicable",
                    f"dead letter {req.id} was discarded at {iso(r['discarded_at'])}: nothing to replay",
                    {"id": req.id},
                )
            if r["replayed_at"] is not None:
                return {**_summary(r), "replayed": False, "already_replayed": True}
            if is_work_item(r["subject"]):
                # Republishing would have the scheduler's relay sign whatever bytes the dead letter holds
                # (a forged item included); the scheduler settles a dead-lettered attempt and its retry
                # policy issues a new one, so there is nothing to replay.
                raise ApiError(
                    "not_applicable",
                    f"dead letter {req.id} is a work item: work items are never replayed (the scheduler "
                    "settles the attempt and retries it per the step's retry policy; restart the run to "
                    "run it again)",
                    {"id": req.id, "subject": r["subject"]},
                )
            headers = {k: str(v) for k, v in (r["headers"] or {}).items() if k != MSG_ID_HEADER}
            headers[REPLAY_HEADER] = str(req.id)
            await add_to_outbox(
                conn,
                [
                    OutgoingMessage(
                        r["subject"], bytes(r["payload"]), msg_id=replay_msg_id(req.id), headers=headers
                    )
                ],
            )
            r = await conn.fetchrow(
                f"UPDATE dead_letter SET replayed_at = now(), replayed_by = $2 WHERE id = $1 RETURNING {COLUMNS}",
                req.id,
                req.actor,
            )
        self.wake_relay()
        log.info(
            "dead_letter_replayed",
            dead_letter_id=req.id,
            subject=r["subject"],
            actor=req.actor,
            reason=req.reason,
        )
        return {**_summary(r), "replayed": True, "already_replayed": False}

    async def discard(self, req: api.DeadLetterRef) -> dict[str, Any]:
        async with self.pool.acquire() as conn, conn.transaction():
            r = await self._row(conn, req.id, lock=True)
            if r["discarded_at"] is None:
                r = await conn.fetchrow(
                    f"UPDATE dead_letter SET discarded_at = now(), discarded_by = $2 WHERE id = $1 "
                    f"RETURNING {COLUMNS}",
                    req.id,
                    req.actor,
                )
                log.info("dead_letter_discarded", dead_letter_id=req.id, actor=req.actor, reason=req.reason)
        return _summary(r)
