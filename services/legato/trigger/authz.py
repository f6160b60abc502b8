"""Who may call which API endpoint, proven by a signature: the trigger's side of docs/security.md.

nats-server already refuses a publish to an endpoint the caller's role lacks; this is the second check
(and the only one that knows *who* asked). A request must be signed by a key in the users file
(``LEGATO_AUTH_USERS``); the signer's name becomes the request's ``actor`` — a request declaring another
actor is refused — and its role must allow the endpoint. Without a users file (no credentials
configured) every request is accepted as before, with a warning at start.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from legato.protocol.api import ApiError, ApiRequest
from legato.security.keyring import Identity
from legato.security.permissions import may_call, required_role
from legato.security.signing import RequestRefused, RequestVerifier

R = TypeVar("R", bound=ApiRequest)


class Authz:
    """Checks each API request's size, signature and the signer's role for the endpoint."""

    def __init__(self, verifier: RequestVerifier | None, *, max_request_bytes: int = 1024 * 1024) -> None:
        self.verifier = verifier
        self.max_request_bytes = max_request_bytes

    def check(self, endpoint: str, req: Any) -> Identity | None:
        """Size, signature and role of a raw request; raises ``ApiError`` naming what is missing."""
        data: bytes = req.data or b""
        if len(data) > self.max_request_bytes:
            raise ApiError(
                "request_too_large",
                f"{endpoint}: request is {len(data)} bytes, the limit is {self.max_request_bytes} "
                "(LEGATO_API_MAX_REQUEST_BYTES)",
            )
        if self.verifier is None:
            return None
        try:
            who = self.verifier.verify(req.subject, data, req.headers)
        except RequestRefused as exc:
            raise ApiError(exc.code, f"{endpoint}: {exc.message}") from None
        if not may_call(who.role, endpoint):
            need = required_role(endpoint)
            raise ApiError(
                "permission_denied",
                f"{endpoint}: needs role {need} or higher; {who.name} has role {who.role}",
                {"endpoint": endpoint, "required_role": need, "role": who.role, "identity": who.name},
            )
        return who

    def bind(self, body: R, who: Identity | None) -> R:
        """The request with ``actor`` set to the proven identity; a different declared actor is refused."""
        if who is None:
            return body
        if body.actor is not None and body.actor != who.name:
            raise ApiError(
                "forbidden",
                f"actor {body.actor!r} does not match the signed identity {who.name!r}",
                {"declared": body.actor, "identity": who.name},
            )
        return msgspec.structs.replace(body, actor=who.name)
