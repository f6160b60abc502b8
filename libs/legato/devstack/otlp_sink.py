"""A minimal OTLP/HTTP receiver: decodes what real exporters send, for tests and benches.

It answers ``POST /v1/traces`` and ``POST /v1/metrics`` like a collector (protobuf in, an empty
protobuf response out, gzip understood), and keeps the decoded spans so a test can check what a real
service process exported over the wire — not what an in-process exporter was handed.
"""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

__all__ = ["OtlpSink", "ReceivedSpan"]


@dataclass(frozen=True)
class ReceivedSpan:
    """A span the sink received over OTLP, as much of it as tests check."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, object]
    links: tuple[str, ...]  # trace ids of linked spans


@dataclass
class _Received:
    spans: list[ReceivedSpan] = field(default_factory=list)
    metric_names: set[str] = field(default_factory=set)
    bodies: list[bytes] = field(default_factory=list)
    requests: int = 0
    bytes: int = 0


def _value(v: object) -> object:
    kind = v.WhichOneof("value")  # type: ignore[attr-defined]
    return getattr(v, kind) if kind in ("string_value", "int_value", "double_value", "bool_value") else None


class OtlpSink:
    """``with OtlpSink() as sink:`` then point ``OTEL_EXPORTER_OTLP_ENDPOINT`` at ``sink.endpoint``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, decode: bool = True) -> None:
        """``decode=False`` only counts requests and bytes (a bench's sink should not eat its CPU)."""
        self._decode = decode
        self._lock = threading.Lock()
        self._got = _Received()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path == "/v1/traces":
                    sink._traces(body)
                    reply = ExportTraceServiceResponse().SerializeToString()
                elif self.path == "/v1/metrics":
                    sink._metrics(body)
                    reply = ExportMetricsServiceResponse().SerializeToString()
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-sink", daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def env(self) -> dict[str, str]:
        """Environment for a service process that should export here over OTLP/HTTP."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        }

    def _traces(self, body: bytes) -> None:
        if not self._decode:
            with self._lock:
                self._got.requests += 1
                self._got.bytes += len(body)
            return
        with self._lock:
            self._got.bodies.append(body)
        req = ExportTraceServiceRequest.FromString(body)
        spans: list[ReceivedSpan] = []
        for rs in req.resource_spans:
            res = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    spans.append(
                        ReceivedSpan(
                            service=str(res.get("service.name", "")),
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in s.attributes},
                            links=tuple(link.trace_id.hex() for link in s.links),
                        )
                    )
        with self._lock:
            self._got.spans.extend(spans)
            self._got.requests += 1
            self._got.bytes += len(body)

    def _metrics(self, body: bytes) -> None:
        req = ExportMetricsServiceRequest.FromString(body)
        names = {m.name for rm in req.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
        with self._lock:
            self._got.metric_names |= names
            self._got.requests += 1
            self._got.bytes += len(body)

    @property
    def trace_bodies(self) -> list[bytes]:
        """Every decoded-mode trace export as received (protobuf bytes): to search for what must not be there."""
        with self._lock:
            return list(self._got.bodies)

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._got.spans)

    @property
    def metric_names(self) -> set[str]:
        with self._lock:
            return set(self._got.metric_names)

    @property
    def requests(self) -> int:
        with self._lock:
            return self._got.requests

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._got.bytes

    def __enter__(self) -> OtlpSink:
        self._thread.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
