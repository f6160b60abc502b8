"""NATS JetStream plumbing: connection, streams, publishing with checked PubAcks, the consumer loop."""

from legato.bus.connection import connect
from legato.bus.consumer import (
    ConsumerLoop,
    DeadLetter,
    DeadLetterSink,
    Delivery,
    Poison,
    Retry,
)
from legato.bus.publisher import MSG_ID_HEADER, OutgoingMessage, Publisher, PublishError
from legato.bus.streams import ConsumerSpec, ProvisioningError, provision_consumer, provision_streams
from legato.bus.topology import Topology, partition_of

__all__ = [
    "MSG_ID_HEADER",
    "ConsumerLoop",
    "ConsumerSpec",
    "DeadLetter",
    "DeadLetterSink",
    "Delivery",
    "OutgoingMessage",
    "Poison",
    "ProvisioningError",
    "PublishError",
    "Publisher",
    "Retry",
    "Topology",
    "connect",
    "partition_of",
    "provision_consumer",
    "provision_streams",
]
