"""Dead letters kept in Postgres with the raw payload, headers and error: the consumer loops' own, and
those database-less services (the executor) report on LEGATO_DEADLETTERS."""

from __future__ import annotations

import asyncpg

from legato.bus.consumer import DeadLetter, Delivery
from legato.protocol.messages import DeadLetterReport
from legato.telemetry import get_logger

log = get_logger("legato.store")


class PostgresDeadLetters:
    """The ``DeadLetterSink`` every consumer loop uses."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def dead_letter(self, record: DeadLetter) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(
                """
                INSERT INTO dead_letter (stream, consumer, subject, stream_seq, msg_id, headers, payload,
                                         error, deliveries)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                ON CONFLICT (stream, consumer, stream_seq) DO UPDATE
                    SET error = EXCLUDED.error, deliveries = EXCLUDED.deliveries
                """,
                record.stream,
                record.consumer,
                record.subject,
                record.stream_seq,
                record.msg_id,
                dict(record.headers),
                record.payload,
                record.error,
                record.deliveries,
            )


class DeadLetterReports:
    """The handler storing ``DeadLetterReport``s from database-less services (run by stateful ones)."""

    def __init__(self, sink: PostgresDeadLetters) -> None:
        self.sink = sink

    async def handle(self, delivery: Delivery[DeadLetterReport]) -> None:
        report = delivery.message
        await self.sink.dead_letter(
            DeadLetter(
                stream=report.stream,
                consumer=report.consumer,
                subject=report.subject,
                stream_seq=report.stream_seq,
                msg_id=report.msg_id,
                headers=report.headers,
                payload=report.payload,
                error=report.error,
                deliveries=report.deliveries,
            )
        )
        log.warning(
            "dead_letter_stored",
            service=report.service,
            consumer=report.consumer,
            stream_seq=report.stream_seq,
            error=report.error[:500],
        )
