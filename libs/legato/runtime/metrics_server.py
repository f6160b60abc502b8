"""``GET /metrics``, ``/healthz`` and ``/readyz``: a service's scrape and probe endpoint, a small asyncio
HTTP server.

Runs as one of the ServiceHost's components when ``LEGATO_METRICS_PORT`` is non-zero. Each scrape
collects from the SDK's pull reader and renders the text format; nothing is computed between scrapes.
``/healthz`` (liveness) answers 200 while the process's event loop does. ``/readyz`` (readiness) runs
the host's checks (NATS connected, Postgres answering where the service has one, every component
running) within ``HEALTH_TIMEOUT`` and answers 200 or 503 with a JSON object naming each check.
A port that cannot be bound is logged and the service goes on without the endpoint.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping

from legato.lifecycle.component import Component
from legato.telemetry import get_logger, metrics
from legato.telemetry.prometheus import CONTENT_TYPE, render_prometheus

log = get_logger("legato.runtime")

MAX_REQUEST_HEAD = 16 * 1024
READ_TIMEOUT = 5.0
HEALTH_TIMEOUT = 3.0
OK = "ok"

# Named checks: "ok", or what is wrong.
ReadinessChecks = Callable[[], Awaitable[Mapping[str, str]]]


def render_current() -> str:
    """This process's metrics in the Prometheus text format; empty when metrics are off."""
    reader = metrics().prometheus
    if reader is None:
        return ""
    return render_prometheus(reader.scrape())


class MetricsServer(Component):
    """Serves ``/metrics`` on ``host:port`` until shutdown (port 0 picks a free port: see ``port``)."""

    name = "metrics-server"
    # Stopped last, so a scrape during shutdown still answers.
    shutdown_stage = 20

    def __init__(
        self,
        host: str,
        port: int,
        *,
        render: Callable[[], str] = render_current,
        readiness: ReadinessChecks | None = None,
    ) -> None:
        super().__init__()
        self.host = host
        self.requested_port = port
        self.render = render
        self.readiness = readiness
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
            elif path == "/healthz":
                await self._respond(writer, 200, "text/plain", b"ok\n", method == "HEAD")
            elif path == "/readyz":
                status, body = await self._ready()
                await self._respond(writer, status, "application/json", body, method == "HEAD")
            elif path != "/metrics":
                await self._respond(
                    writer,
                    404,
                    "text/plain",
                    b"not found: try /metrics, /healthz or /readyz\n",
                    method == "HEAD",
                )
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

    async def _ready(self) -> tuple[int, bytes]:
        checks: dict[str, str] = {}
        if self.readiness is not None:
            try:
                checks = dict(await asyncio.wait_for(self.readiness(), HEALTH_TIMEOUT))
            except TimeoutError:
                checks = {"checks": f"no answer within {HEALTH_TIMEOUT:g}s"}
        if self.stopping:
            checks["service"] = "shutting down"
        ready = all(v == OK for v in checks.values())
        body = json.dumps({"status": "ready" if ready else "not_ready", "checks": checks}) + "\n"
        return (200 if ready else 503), body.encode()

    @staticmethod
    async def _respond(
        writer: asyncio.StreamWriter, status: int, content_type: str, body: bytes, head_only: bool
    ) -> None:
        reason = {
            200: "OK",
            404: "Not Found",
            405: "Method Not Allowed",
            500: "Internal Server Error",
            503: "Service Unavailable",
        }[status]
        writer.write(
            (
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode("latin-1")
            + (b"" if head_only else body)
        )
        await writer.drain()
