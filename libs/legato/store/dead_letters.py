"""Dead letters kept in Postgres with the raw payload, headers and error."""

from __future__ import annotations

import asyncpg

from legato.bus.consumer import DeadLetter


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
