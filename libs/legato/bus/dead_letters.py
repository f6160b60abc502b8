"""Dead letters of a service without a database: published to ``legato.deadletter.<service>``.

The executor keeps no state, so its consumer loop's ``DeadLetterSink`` is this one: each record becomes
a ``DeadLetterReport`` on the LEGATO_DEADLETTERS stream, with ``Nats-Msg-Id`` naming the dead message,
and every service that has Postgres stores it in ``dead_letter`` (``legato.store.dead_letters``). If the
publish fails the sink raises, and the consumer loop leaves the message for a later try: nothing is lost.
"""

from __future__ import annotations

from legato.bus.consumer import DeadLetter
from legato.bus.publisher import OutgoingMessage, Publisher
from legato.bus.streams import MAX_MSG_SIZE
from legato.bus.topology import Topology
from legato.protocol.messages import DeadLetterReport, encode

# Room for the report's other fields and headers; the payload travels base64-encoded (4/3 larger).
_ENVELOPE_ALLOWANCE = 64 * 1024
MAX_REPORTED_PAYLOAD = (MAX_MSG_SIZE - _ENVELOPE_ALLOWANCE) * 3 // 4


class NatsDeadLetters:
    """A ``DeadLetterSink`` that hands dead letters to the stateful services over JetStream."""

    def __init__(self, publisher: Publisher, topology: Topology, service: str) -> None:
        self.publisher = publisher
        self.subject = topology.deadletter_subject(service)
        self.service = service

    async def dead_letter(self, record: DeadLetter) -> None:
        payload, error = record.payload, record.error
        if len(payload) > MAX_REPORTED_PAYLOAD:
            error = f"{error} (payload of {len(payload)} bytes cut to {MAX_REPORTED_PAYLOAD})"
            payload = payload[:MAX_REPORTED_PAYLOAD]
        report = DeadLetterReport(
            service=self.service,
            stream=record.stream,
            consumer=record.consumer,
            subject=record.subject,
            stream_seq=record.stream_seq,
            msg_id=record.msg_id,
            headers=dict(record.headers),
            payload=payload,
            error=error,
            deliveries=record.deliveries,
        )
        msg_id = f"dl:{record.stream}:{record.consumer}:{record.stream_seq}:{record.deliveries}"
        await self.publisher.publish(OutgoingMessage(self.subject, encode(report), msg_id=msg_id))
