"""What a resource module hands the API server: its endpoints by ``resource.verb``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from legato.protocol import api

Handler = Callable[[Any], Awaitable[Any]]
"""Takes the decoded request, returns the reply (a typed reply Struct or a JSON-able dict), or raises
``ApiError``."""

Endpoint = tuple[type[api.ApiRequest], Handler]
"""The request Struct an endpoint decodes, and its handler."""
