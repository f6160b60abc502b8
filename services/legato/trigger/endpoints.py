"""What a resource module hands the API server: its endpoints by ``resource.verb``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from legato.protocol import api
from legato.protocol.replies import R, to_reply

Handler = Callable[[Any], Awaitable[Any]]
"""Takes the decoded request, returns the reply (a typed reply Struct or a JSON-able dict), or raises
``ApiError``."""

Endpoint = tuple[type[api.ApiRequest], Handler]
"""The request Struct an endpoint decodes, and its handler."""


def typed(fn: Callable[[Any], Awaitable[Any]], reply: type[R]) -> Handler:
    """``fn``'s result (a dict built from rows, paged to fit) as the reply Struct ``reply``: the shape an
    endpoint answers is checked here, on the trigger, and the client decodes the same Struct."""

    async def handler(req: Any) -> R:
        return to_reply(reply, await fn(req))

    return handler
