"""``GET /metrics``: a service's Prometheus scrape endpoint, a small asyncio HTTP server.

Runs as one of the ServiceHost's components when ``LEGATO_METRICS_PORT`` is non-zero. Each scrape
collects from the SDK's pull reader and renders the text format; nothing is computed between scrapes.
A port that cannot be bound is logged and the service goes on without the endpoint.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from legato.runtime.component import Component
from legato.telemetry import get_logger, metrics
from legato.telemetry.prometheus import CONTENT_TYPE, render_prometheus

log = get_logger("legato.runtime")

MAX_REQUEST_HEAD = 16 * 1024
READ_TIMEOUT = 5.0


def render_current() -> str:
    reader = metrics().prometheus
    if reader is None:
        return ""
    return render_prometheus(reader.scrape())


class MetricsServer(Component):
    """Serves ``/metrics`` on ``host:port`` until shutdown (port 0 picks a free port: see ``port``)."""

    name = "metrics-server"
    # Stopped last, so a scrape during shutdown still answers.
    shutdown_stage = 20

    def __init__(self, host: str, port: int, *, render: Callable[[], str] = render_current) -> None:
        super().__init__()
        self.host = host
        self.requested_port = port
        self.render = render
        self.port: int | None = None
        self.ready = asyncio.Event()
        self.scrapes = 0

    async def _run(self) -> None:
        try:
            server = await asyncio.start_server(
                self._serve, self.host, self.requested_port, limit=MAX_REQUEST_HEAD
            )
        except OSError as exc:
            log.error(
                "metrics_endpoint_unavailable", host=self.host, port=self.requested_port, error=str(exc)
            )
            self.ready.set()
            await self.wait_stopping()
            return
        self.port = server.sockets[0].getsockname()[1]
        log.info("metrics_endpoint_listening", host=self.host, port=self.port, path="/metrics")
        self.ready.set()
        try:
            await self.wait_stopping()
        finally:
            server.close()
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=READ_TIMEOUT)
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                await self._respond(writer, 405, "text/plain", b"method not allowed\n", method == "HEAD")
            elif path != "/metrics":
                await self._respond(writer, 404, "text/plain", b"not found: try /metrics\n", method == "HEAD")
            else:
                self.scrapes += 1
                body = self.render().encode()
                await self._respond(writer, 200, CONTENT_TYPE, body, method == "HEAD")
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except Exception as exc:
            log.warning("metrics_scrape_failed", error=repr(exc))
            try:
                await self._respond(writer, 500, "text/plain", b"scrape failed\n", False)
            except Exception:
                pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except Exception:
                pass

    @staticmethod
    async def _respond(
        writer: asyncio.StreamWriter, status: int, content_type: str, body: bytes, head_only: bool
    ) -> None:
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error"}[
            status
        ]
        writer.write(
            (
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode("latin-1")
            + (b"" if head_only else body)
        )
        await writer.drain()
