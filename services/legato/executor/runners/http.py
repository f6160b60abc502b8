"""``http``: one HTTP(S) request with the standard library, in a bounded thread pool.

``config``: ``url`` (http or https only), ``method`` (GET), ``headers`` (object), ``body`` (None; a
string is sent as is; any other JSON value is sent as JSON with ``content-type: application/json``),
``success_status`` (list of codes; default or empty: any 2xx), ``timeout`` (seconds, per socket operation and for
the whole body read; default 30). Outputs: ``{"status", "headers", "body"}`` with a few response
headers and the body (at most 1 MiB; parsed when the response says JSON), plus ``"truncated": true``
when the body was cut. A status outside ``success_status`` fails the step (the outputs are still sent).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.message import Message
from typing import Annotated

import msgspec

from legato.executor.step_runner import StepContext, StepFailed, StepResult, parse_config
from legato.protocol.messages import JSONValue

BODY_LIMIT = 1024 * 1024
READ_CHUNK = 64 * 1024
KEPT_HEADERS = ("content-type", "content-length", "location", "etag", "last-modified", "retry-after")


class HttpConfig(msgspec.Struct, frozen=True):
    """An ``http`` step's config: the request, the statuses that count as success, and the timeout."""

    url: str
    method: str = "GET"
    headers: dict[str, str] = {}
    body: JSONValue = None
    success_status: list[int] | None = None
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 30.0


@dataclass(frozen=True)
class HttpResponse:
    """A response as the runner read it: status, headers, body (cut at the output limit)."""

    status: int
    headers: dict[str, str]
    body: bytes
    truncated: bool


class HttpRunner:
    """Requests run in a thread pool as large as the executor's concurrency, so they never queue."""

    step_type = "http"

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self.pool = pool

    async def run(self, ctx: StepContext) -> StepResult:
        config = parse_config(ctx.item.config, HttpConfig)
        url = config.url
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme not in ("http", "https"):
            raise StepFailed(f"config.url: only http and https URLs are allowed, got {url!r}")
        method = config.method.upper()
        if not method.isalpha():
            raise StepFailed(f"config.method: expected an HTTP method, got {config.method!r}")
        data, headers = encode_body(config.body, config.headers)
        stop = threading.Event()
        loop = asyncio.get_running_loop()
        call = loop.run_in_executor(
            self.pool, _request, url, method, headers, data, config.timeout, BODY_LIMIT, stop
        )
        try:
            response = await call
        except BaseException:
            stop.set()  # the thread gives up at its next chunk; socket timeouts bound the rest
            raise
        outputs = response_outputs(response)
        # An empty list is what a definition without success_status compiles to: any 2xx.
        ok = (
            response.status in config.success_status
            if config.success_status
            else 200 <= response.status < 300
        )
        if not ok:
            raise StepFailed(f"HTTP {response.status} from {url}", outputs=outputs)
        return StepResult(outputs=outputs)


def encode_body(body: JSONValue, headers: dict[str, str]) -> tuple[bytes | None, dict[str, str]]:
    """The request body as bytes and the headers with a content type (JSON unless a string is given)."""
    out = dict(headers)
    has_type = any(k.lower() == "content-type" for k in out)
    if body is None:
        return None, out
    if isinstance(body, str):
        if not has_type:
            out["Content-Type"] = "text/plain; charset=utf-8"
        return body.encode(), out
    if not has_type:
        out["Content-Type"] = "application/json"
    return json.dumps(body, separators=(",", ":")).encode(), out


def _request(
    url: str,
    method: str,
    headers: dict[str, str],
    data: bytes | None,
    timeout: float,
    limit: int,
    stop: threading.Event,
) -> HttpResponse:
    """Blocking: send the request and read at most ``limit`` body bytes within ``timeout`` seconds."""
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    deadline = time.monotonic() + timeout
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        response = exc  # a non-2xx status is a response, not a connection failure
    except urllib.error.URLError as exc:
        raise StepFailed(f"cannot reach {url}: {exc.reason}") from None
    except TimeoutError:
        raise StepFailed(f"no response from {url} within {timeout:g}s") from None
    except (OSError, ValueError) as exc:
        raise StepFailed(f"request to {url} failed: {exc}") from None
    with response:
        chunks: list[bytes] = []
        size = 0
        truncated = False
        try:
            while not stop.is_set():
                if time.monotonic() > deadline:
                    raise StepFailed(f"response body from {url} not read within {timeout:g}s")
                chunk = response.read(min(READ_CHUNK, limit + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    truncated = True
                    break
        except TimeoutError:
            raise StepFailed(f"response body from {url} not read within {timeout:g}s") from None
        except OSError as exc:
            raise StepFailed(f"reading the response from {url} failed: {exc}") from None
        status = response.status if response.status is not None else 0
        kept = _kept_headers(response.headers)
    return HttpResponse(status=status, headers=kept, body=b"".join(chunks)[:limit], truncated=truncated)


def _kept_headers(headers: Message) -> dict[str, str]:
    return {name: str(headers[name]) for name in KEPT_HEADERS if headers.get(name) is not None}


def response_outputs(response: HttpResponse) -> dict[str, JSONValue]:
    """An ``http`` step's outputs: status, headers and body (parsed when JSON)."""
    content_type = response.headers.get("content-type", "")
    body: JSONValue = decode_text(response.body, content_type)
    if is_json(content_type) and not response.truncated:
        try:
            body = json.loads(response.body)
        except ValueError:
            pass  # said JSON but is not: keep the text
    outputs: dict[str, JSONValue] = {"status": response.status, "headers": response.headers, "body": body}
    if response.truncated:
        outputs["truncated"] = True
    return outputs


def is_json(content_type: str) -> bool:
    """Whether a content type is JSON (``application/json`` or ``…+json``)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def decode_text(body: bytes, content_type: str) -> str:
    """A body as text in its declared charset (UTF-8 by default), undecodable bytes replaced."""
    msg = Message()
    msg["content-type"] = content_type or "text/plain"
    charset = msg.get_content_charset() or "utf-8"
    try:
        return body.decode(charset, errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")
