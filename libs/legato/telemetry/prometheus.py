"""Prometheus text exposition (format 0.0.4) rendered from the OpenTelemetry SDK's collected metrics.

``PrometheusReader`` is a pull ``MetricReader``: each scrape collects (cumulative) and renders. Names
follow the usual OTel -> Prometheus mapping: dots become underscores, a seconds unit adds
``_seconds``, monotonic sums end in ``_total``, histograms give cumulative ``_bucket{le=…}``, ``_sum``
and ``_count``; resource attributes go to one ``target_info`` series.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    HistogramDataPoint,
    MetricReader,
    MetricsData,
    NumberDataPoint,
    Sum,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_INVALID_NAME = re.compile(r"[^a-zA-Z0-9_:]")
_INVALID_LABEL = re.compile(r"[^a-zA-Z0-9_]")
_UNIT_SUFFIX = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "1": "ratio"}


class PrometheusReader(MetricReader):
    """A pull reader: ``scrape()`` collects now and returns the data (cumulative temporality)."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._data: MetricsData | None = None

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **_: Any) -> None:
        self._data = metrics_data

    def scrape(self) -> MetricsData | None:
        with self._lock:
            self.collect()
            data, self._data = self._data, None
        return data

    def shutdown(self, timeout_millis: float = 30_000, **_: Any) -> None:
        pass


def metric_name(name: str, unit: str = "") -> str:
    """``legato.step.duration`` + ``s`` -> ``legato_step_duration_seconds``."""
    out = _INVALID_NAME.sub("_", name)
    if out[:1].isdigit():
        out = "_" + out
    suffix = _UNIT_SUFFIX.get(unit, "")
    if suffix and not out.endswith("_" + suffix):
        out = f"{out}_{suffix}"
    return out


def label_name(name: str) -> str:
    """An attribute name as a valid Prometheus label name."""
    out = _INVALID_LABEL.sub("_", name)
    return "_" + out if out[:1].isdigit() else out


def escape_label_value(value: str) -> str:
    """A label value escaped for the Prometheus text format."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    """A HELP text escaped for the Prometheus text format."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value as the Prometheus text format writes it (``+Inf``, ``NaN``, ints without a point)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def labels(attrs: Mapping[str, Any], extra: Iterable[tuple[str, str]] = ()) -> str:
    """The ``{name="value",…}`` label set of a sample, sorted, with ``extra`` labels last."""
    pairs = [(label_name(str(k)), str(v)) for k, v in attrs.items()]
    pairs.sort()
    pairs.extend(extra)
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{escape_label_value(v)}"' for k, v in pairs) + "}"


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else format_value(float(bound))


def render_prometheus(data: MetricsData | None) -> str:
    """The text exposition of ``data`` (an empty string when nothing was collected)."""
    if data is None:
        return ""
    families: dict[str, tuple[str, str, list[str]]] = {}
    info: list[str] = []
    for rm in data.resource_metrics:
        res = {k: v for k, v in rm.resource.attributes.items() if not k.startswith("telemetry.sdk")}
        if res:
            info.append("target_info" + labels(res) + " 1")
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                base = metric_name(m.name, m.unit or "")
                point_data = m.data
                if isinstance(point_data, Sum) and point_data.is_monotonic:
                    name, kind = base + "_total", "counter"
                elif isinstance(point_data, Sum | Gauge):
                    name, kind = base, "gauge"
                elif isinstance(point_data, Histogram):
                    name, kind = base, "histogram"
                else:
                    continue  # exponential histograms are not configured by Legato
                _, _, lines = families.setdefault(name, (kind, m.description or "", []))
                for point in point_data.data_points:
                    if isinstance(point, NumberDataPoint):
                        lines.append(f"{name}{labels(point.attributes or {})} {format_value(point.value)}")
                    elif isinstance(point, HistogramDataPoint):
                        lines.extend(_histogram_lines(name, point))
    out: list[str] = []
    if info:
        out += ["# HELP target_info Target metadata", "# TYPE target_info gauge", *sorted(set(info))]
    for name in sorted(families):
        kind, help_text, lines = families[name]
        if help_text:
            out.append(f"# HELP {name} {escape_help(help_text)}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(lines)
    return "\n".join(out) + "\n" if out else ""


def _histogram_lines(name: str, point: HistogramDataPoint) -> list[str]:
    attrs = point.attributes or {}
    lines = []
    cumulative = 0
    bounds = [*point.explicit_bounds, math.inf]
    for bound, count in zip(bounds, point.bucket_counts, strict=False):
        cumulative += count
        lines.append(f"{name}_bucket{labels(attrs, [('le', _le(bound))])} {cumulative}")
    lines.append(f"{name}_sum{labels(attrs)} {format_value(point.sum)}")
    lines.append(f"{name}_count{labels(attrs)} {point.count}")
    return lines
