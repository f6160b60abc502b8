"""A test hook: every finished span as one JSON line in a file shared by all service processes.

Set ``LEGATO_TEST_SPAN_FILE`` (``Settings.test_span_file``) for every service and an end-to-end test
can read the spans of all of them without a tracing backend. Each span is one ``write(2)`` of one line
on a file opened with ``O_APPEND``, so lines from several processes never interleave, and spans are
written as they end (a ``kill -9`` loses only spans that had not ended).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult


def _hex(value: int | None, width: int) -> str | None:
    return None if value is None else format(value, f"0{width}x")


def _attrs(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in (attributes or {}).items()}


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """The JSON-able form of one finished span (ids as lowercase hex, times in ns since the epoch)."""
    ctx = span.get_span_context()
    assert ctx is not None
    return {
        "trace_id": _hex(ctx.trace_id, 32),
        "span_id": _hex(ctx.span_id, 16),
        "parent_span_id": _hex(span.parent.span_id, 16) if span.parent is not None else None,
        "name": span.name,
        "kind": span.kind.name,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": _attrs(span.attributes),
        "events": [
            {"name": e.name, "time_ns": e.timestamp, "attributes": _attrs(e.attributes)} for e in span.events
        ],
        "links": [
            {
                "trace_id": _hex(link.context.trace_id, 32),
                "span_id": _hex(link.context.span_id, 16),
                "attributes": _attrs(link.attributes),
            }
            for link in span.links
        ],
        "service": span.resource.attributes.get("service.name"),
    }


class SpanFileExporter(SpanExporter):
    """Appends spans to ``path`` as JSON lines (use with a ``SimpleSpanProcessor``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            if self._fd is None:
                return SpanExportResult.FAILURE
            for span in spans:
                line = (json.dumps(span_record(span), default=str, separators=(",", ":")) + "\n").encode()
                try:
                    written = os.write(self._fd, line)
                    while written < len(line):  # only on a full disk or a signal: finish the line
                        written += os.write(self._fd, line[written:])
                except OSError:
                    return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def read_span_file(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The spans in a span file, in the order they were written (a torn last line is skipped)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return
    for line in text.splitlines():
        if line.strip():
            try:
                yield json.loads(line)
            except ValueError:
                continue
