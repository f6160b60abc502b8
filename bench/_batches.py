"""The scheduler's workflow-actor batches over a bench phase, read from its Prometheus endpoint.

With ``--batches`` (``foreach.py``, ``profile.py``, ``signals.py``) the bench starts the scheduler with a metrics port
and reads ``legato.scheduler.batch.*`` before and after a phase: how many batches the actors committed,
how many messages each applied, and where an actor's time went, computing (everything but the batch's
final write: its own Python, any reads and locks, handing its rows over) or writing (the final
statement, from encoding its rows to its commit: mostly waiting for Postgres). *Busy* is actor-seconds
per second of the phase: with one workflow, the fraction of the time its actor was in a batch (a message
that arrives then waits for the batch in progress). With metrics on, every instrument of the scheduler
records, so that run's CPU figures are not comparable with a run without the flag.
"""

from __future__ import annotations

import re
import socket
import urllib.request
from dataclasses import dataclass
from typing import Any

MESSAGES = "legato_scheduler_batch_messages"
DURATION = "legato_scheduler_batch_duration_seconds"
_LINE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'(?P<key>[a-z_]+)="(?P<value>[^"]*)"')


@dataclass(frozen=True)
class BatchReading:
    """Cumulative figures of the scheduler's batches at one scrape."""

    batches: float = 0.0
    messages: float = 0.0
    compute: float = 0.0  # seconds, summed over batches
    write: float = 0.0
    buckets: tuple[tuple[float, float], ...] = ()  # (upper bound, cumulative batches) of messages/batch


def parse(text: str) -> BatchReading:
    """The batch figures in a Prometheus text exposition (zeros when the scheduler has none yet)."""
    values: dict[str, float] = {}
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m is None or not m["name"].startswith((MESSAGES, DURATION)):
            continue
        labels = {lm["key"]: lm["value"] for lm in _LABEL.finditer(m["labels"] or "")}
        value = float(m["value"])
        if m["name"] == f"{MESSAGES}_bucket":
            buckets.append((float(labels["le"]), value))
        else:
            values[f"{m['name']}:{labels.get('phase', '')}"] = value
    return BatchReading(
        batches=values.get(f"{MESSAGES}_count:", 0.0),
        messages=values.get(f"{MESSAGES}_sum:", 0.0),
        compute=values.get(f"{DURATION}_sum:compute", 0.0),
        write=values.get(f"{DURATION}_sum:write", 0.0),
        buckets=tuple(sorted(buckets)),
    )


def scrape(port: int, timeout: float = 5.0) -> BatchReading:
    """The scheduler's batch figures now (its ``/metrics`` on 127.0.0.1:``port``)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as reply:
        return parse(reply.read().decode())


def metrics_env(port: int) -> dict[str, str]:
    """A service's environment for its metrics endpoint on 127.0.0.1:``port`` (with the OpenTelemetry
    SDK on: a bench that turns it off for its services would turn the meters off too)."""
    return {
        "LEGATO_METRICS_PORT": str(port),
        "LEGATO_METRICS_HOST": "127.0.0.1",
        "OTEL_SDK_DISABLED": "false",
    }


def stack_options(enabled: bool) -> tuple[int, dict[str, Any]]:
    """The scheduler's metrics port (0 when not ``enabled``) and the ``bench_stack`` options that give
    it one. Empty when not enabled: a checkout from before ``per_service_env`` has no such argument."""
    if not enabled:
        return 0, {}
    port = free_port()
    return port, {"per_service_env": {"scheduler": metrics_env(port)}}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for the scheduler's metrics endpoint)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def median_bound(before: BatchReading, after: BatchReading) -> float | None:
    """The upper bound of the bucket that holds the median batch's message count over the phase."""
    old = dict(before.buckets)
    counts = [(le, n - old.get(le, 0.0)) for le, n in after.buckets]
    total = after.batches - before.batches
    for le, cumulative in counts:
        if total > 0 and cumulative >= total / 2:
            return le
    return None


def report(before: BatchReading, after: BatchReading, seconds: float, label: str = "") -> list[str]:
    """Lines that say what the actors' batches did between two readings ``seconds`` apart."""
    batches = after.batches - before.batches
    if batches <= 0:
        return [f"  actor batches{label}: none (a scheduler without legato.scheduler.batch.* metrics?)"]
    messages = after.messages - before.messages
    compute = after.compute - before.compute
    write = after.write - before.write
    bound = median_bound(before, after)
    median = "?" if bound is None else ("> 512" if bound == float("inf") else f"<= {bound:g}")
    return [
        f"  actor batches{label}: {batches / seconds:.0f}/s, {messages / batches:.1f} messages each "
        f"(median {median}); busy {(compute + write) / seconds:.2f} actor-s/s",
        f"    per batch: compute {1000 * compute / batches:.2f} ms + write {1000 * write / batches:.2f} ms; "
        f"per message: compute {1e6 * compute / messages:.0f} us + write {1e6 * write / messages:.0f} us",
    ]
