"""A client for Legato's NATS API: ``LegatoClient`` (typed replies and errors), ``legato.client.sync``
(the same from synchronous code), ``legato.client.errors`` (one exception per error code)."""

from legato.client.client import LegatoClient
from legato.client.errors import (
    BadReply,
    Conflict,
    Internal,
    InvalidRequest,
    LegatoError,
    NotApplicable,
    NotFound,
    Overloaded,
    PermissionDenied,
    Timeout,
    Unauthenticated,
    Unavailable,
)
from legato.protocol.api import ApiError

__all__ = [
    "ApiError",
    "BadReply",
    "Conflict",
    "Internal",
    "InvalidRequest",
    "LegatoClient",
    "LegatoError",
    "NotApplicable",
    "NotFound",
    "Overloaded",
    "PermissionDenied",
    "Timeout",
    "Unauthenticated",
    "Unavailable",
]
