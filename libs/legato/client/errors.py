"""Typed exceptions for the error codes of Legato's API.

Every error reply is ``{"error": {"code", "message", "details"}}``; the client raises the subclass of
``LegatoError`` its code maps to (``NotFound`` for ``not_found``, ``Conflict`` for ``conflict``, …),
carrying the server's ``code``, ``message`` and ``details``. ``LegatoError`` is an ``ApiError``, so code
that catches ``ApiError`` and reads ``.code`` keeps working. A code this version does not know raises
``LegatoError`` itself.
"""

from __future__ import annotations

from typing import Any

from legato.protocol.api import ApiError


class LegatoError(ApiError):
    """Base of every error the client raises for an API error: ``code``, ``message``, ``details``."""

    codes: tuple[str, ...] = ()
    """The error codes this class stands for."""
    retryable = False
    """Whether the same request may succeed when sent again (the server did not act on it)."""


class InvalidRequest(LegatoError):
    """The request is wrong: a field's type or value, a definition, the run's params, its size. Raised
    before sending for a field the client can check (``details["field"]`` names it)."""

    codes = ("bad_request", "invalid_params", "invalid_definition", "request_too_large", "too_large")


class NotFound(LegatoError):
    """The workflow, run, signal, tag, dead letter or backfill does not exist."""

    codes = ("not_found",)


class Conflict(LegatoError):
    """The request contradicts what exists, e.g. a request id reused for a different start."""

    codes = ("conflict",)


class NotApplicable(LegatoError):
    """The action does not apply to the current state (stop an ended run, start an inactive workflow,
    unblock a workflow that is not blocked)."""

    codes = ("not_applicable", "inactive")


class PermissionDenied(LegatoError):
    """The caller's role does not allow the call, or it declared an actor it is not."""

    codes: tuple[str, ...] = ("permission_denied", "forbidden")


class Unauthenticated(PermissionDenied):
    """The request is not signed by a known key (no or wrong credentials)."""

    codes = ("unauthenticated",)


class Unavailable(LegatoError):
    """No trigger answers (``no responders``): nothing was done; safe to retry."""

    codes: tuple[str, ...] = ("unavailable",)
    retryable = True


class Timeout(Unavailable):
    """No reply within the timeout: the request may or may not have been acted on (a start with a
    request id can be sent again safely: the same id is the same run)."""

    codes = ("timeout",)


class Overloaded(Unavailable):
    """The server refused the request for lack of capacity; retry later."""

    codes = ("overloaded",)


class Internal(LegatoError):
    """The server failed while serving the request (a bug or an outage of its database)."""

    codes = ("internal",)


class BadReply(LegatoError):
    """The reply is not the shape this client expects (a server of another version)."""

    codes = ("bad_reply",)


ERRORS: dict[str, type[LegatoError]] = {
    code: kind
    for kind in (
        InvalidRequest,
        NotFound,
        Conflict,
        NotApplicable,
        PermissionDenied,
        Unauthenticated,
        Unavailable,
        Timeout,
        Overloaded,
        Internal,
        BadReply,
    )
    for code in kind.codes
}
"""Error code -> the exception the client raises for it."""


def error_for(code: str, message: str, details: dict[str, Any] | None = None) -> LegatoError:
    """The typed exception for an error ``code`` (``LegatoError`` for a code this version does not know)."""
    return ERRORS.get(code, LegatoError)(code, message, details)


__all__ = [
    "ERRORS",
    "BadReply",
    "Conflict",
    "Internal",
    "InvalidRequest",
    "LegatoError",
    "NotApplicable",
    "NotFound",
    "Overloaded",
    "PermissionDenied",
    "Timeout",
    "Unauthenticated",
    "Unavailable",
    "error_for",
]
