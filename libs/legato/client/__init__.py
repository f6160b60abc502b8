"""A client for Legato's NATS API, used by the CLI, the tests and the benchmarks."""

from legato.client.client import LegatoClient
from legato.protocol.api import ApiError

__all__ = ["ApiError", "LegatoClient"]
