"""A run's span tree built from what Legato stored (``instance.get``), for ``legato show RUN --trace``.

No tracing backend is needed: the tree mirrors the spans the services emit (``workflow.run`` ->
``run.queue_wait``, steps -> ``step.attempt``, retries and other timeline events) with the times kept
in Postgres, so it is there even when no collector was running. ``build_trace_tree`` is a pure function
over the ``instance.get`` reply and returns plain data (``--json``); ``render_trace_tree`` draws it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

# Timeline events already shown by a node of their own (the run, an attempt, a step's status).
_RUN_EVENTS_SHOWN = frozenset(
    {"created", "started", "succeeded", "failed", "timed_out", "stopped", "skipped", "cancelled"}
)
_STEP_EVENTS_SHOWN = frozenset({"step_dispatched", "step_succeeded", "step_failed", "step_skipped"})
# Timeline event -> the span (or span event) name the services use for it.
_EVENT_SPAN_NAMES = {
    "step_retry_scheduled": "step.retry_scheduled",
    "step_waiting": "run.waiting",
    "restart_requested": "operator.action",
}


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _seconds(start: str | None, end: str | None) -> float | None:
    a, b = _time(start), _time(end)
    if a is None or b is None:
        return None
    return max(0.0, (b - a).total_seconds())


def _node(
    name: str,
    kind: str,
    *,
    start: str | None,
    end: str | None,
    status: str | None = None,
    label: str = "",
    attributes: Mapping[str, Any] | None = None,
    children: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    return {
        "name": name,
        "kind": kind,
        "label": label,
        "status": status,
        "start": start,
        "end": end,
        "duration_s": _seconds(start, end),
        "attributes": {k: v for k, v in (attributes or {}).items() if v not in (None, "", {}, [])},
        "children": list(children),
    }


def _sort_key(node: Mapping[str, Any]) -> tuple[int, str]:
    # Nodes without a start time (steps not reached) go last, in the order given.
    return (0, node["start"]) if node["start"] else (1, "")


def _event_node(t: Mapping[str, Any]) -> dict[str, Any]:
    name = _EVENT_SPAN_NAMES.get(t["event"], "operator.action" if t.get("actor") else t["event"])
    return _node(
        name,
        "event",
        start=t["at"],
        end=t["at"],
        label=f"{name}: {t.get('message') or t['event']}",
        attributes={"event": t["event"], "actor": t.get("actor"), "details": t.get("details")},
    )


def _attempt_node(a: Mapping[str, Any]) -> dict[str, Any]:
    return _node(
        "step.attempt",
        "attempt",
        start=a.get("dispatched_at"),
        end=a.get("ended_at"),
        status=a.get("status"),
        label=f"attempt {a.get('attempt')}",
        attributes={
            "legato.attempt": a.get("attempt"),
            "legato.attempt_id": a.get("attempt_id"),
            "legato.outcome": a.get("status"),
            "failure_kind": a.get("failure_kind"),
            "executor": a.get("executor"),
            "queue": a.get("queue"),
            "started": a.get("started_at"),
            "waited_s": _seconds(a.get("dispatched_at"), a.get("started_at")),
            "ran_s": _seconds(a.get("started_at"), a.get("ended_at")),
            "exit_code": a.get("exit_code"),
            "error": a.get("error"),
        },
    )


def _progress_text(progress: Mapping[str, Any] | None) -> str | None:
    if not progress:
        return None
    kind = progress.get("kind")
    if kind == "foreach":
        parts = [f"{progress.get('succeeded', 0)}/{progress.get('total', 0)} succeeded"]
        parts += [
            f"{progress[k]} {k}" for k in ("running", "failed", "ignored", "pending") if progress.get(k)
        ]
        return "foreach " + ", ".join(parts)
    if kind == "loop":
        return f"loop iteration {progress.get('index', 0)} of at most {progress.get('max')}"
    if kind == "subworkflow":
        return f"child run {progress.get('child')} of {progress.get('workflow')}"
    return None


def _step_node(step: Mapping[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    retries = {k: v for k, v in (step.get("retries") or {}).items() if v}
    children = [_attempt_node(a) for a in step.get("attempts") or []] + events
    children.sort(key=_sort_key)
    return _node(
        "step",
        "step",
        start=step.get("created_at"),
        end=step.get("ended_at"),
        status=step.get("status"),
        label=f"step {step['step_id']}",
        attributes={
            "legato.step_id": step["step_id"],
            "retries": retries,
            "progress": _progress_text(step.get("progress")),
            "failure_ignored": step.get("failure_ignored") or None,
            "error": step.get("error"),
        },
        children=children,
    )


def build_trace_tree(info: Mapping[str, Any]) -> dict[str, Any]:
    """The span tree of one run from an ``instance.get`` reply (plain, JSON-able data)."""
    timeline: list[Mapping[str, Any]] = list(info.get("timeline") or [])
    by_step: dict[str, list[dict[str, Any]]] = {}
    run_events: list[dict[str, Any]] = []
    for t in timeline:
        step_id = t.get("step_id")
        if step_id:
            if t["event"] not in _STEP_EVENTS_SHOWN:
                by_step.setdefault(step_id, []).append(_event_node(t))
        elif t["event"] not in _RUN_EVENTS_SHOWN:
            run_events.append(_event_node(t))
    children: list[dict[str, Any]] = []
    created, started = info.get("created_at"), info.get("started_at")
    if created:
        children.append(
            _node(
                "run.queue_wait",
                "queue_wait",
                start=created,
                end=started,
                label="queue wait" + ("" if started else " (not started)"),
            )
        )
    known = set()
    for step in info.get("steps") or []:
        known.add(step["step_id"])
        children.append(_step_node(step, by_step.get(step["step_id"], [])))
    for step_id, events in by_step.items():
        if step_id not in known:  # e.g. a step of an older run number no longer listed
            children.append(_step_node({"step_id": step_id}, events))
    children.extend(run_events)
    children.sort(key=_sort_key)
    trigger = info.get("trigger") or {}
    root = _node(
        "workflow.run",
        "run",
        start=created,
        end=info.get("ended_at"),
        status=info.get("status"),
        label=f"run {info.get('instance_id')} ({info.get('workflow_id')} v{info.get('version')})",
        attributes={
            "legato.workflow_id": info.get("workflow_id"),
            "legato.workflow_version": info.get("version"),
            "legato.instance_id": info.get("instance_id"),
            "legato.trigger_kind": trigger.get("kind"),
            "legato.status": info.get("status"),
            "run_number": info.get("run_number"),
            "parent_instance_id": info.get("parent_instance_id"),
            "error": info.get("error"),
        },
        children=children,
    )
    return {
        "instance_id": info.get("instance_id"),
        "workflow_id": info.get("workflow_id"),
        "trace_id": info.get("trace_id"),
        "traceparent": info.get("traceparent"),
        "root": root,
    }


def format_duration(seconds: float | None) -> str:
    """Seconds as a short duration (``12ms``, ``3.4s``, ``2m05s``); ``…`` when unknown."""
    if seconds is None:
        return "…"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{int(minutes)}m{secs:04.1f}s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)}h{int(minutes):02d}m"


def _line(node: Mapping[str, Any], origin: datetime | None) -> str:
    attrs = node["attributes"]
    parts = [node["label"] or node["name"]]
    if node["status"]:
        parts.append(str(node["status"]).upper())
    if node["kind"] != "event":
        parts.append(format_duration(node["duration_s"]))
    start = _time(node["start"])
    if origin is not None and start is not None and node["kind"] != "run":
        parts.append(f"@+{format_duration((start - origin).total_seconds())}")
    if node["kind"] == "attempt":
        waited, ran = attrs.get("waited_s"), attrs.get("ran_s")
        if waited is not None or ran is not None:
            parts.append(f"(waited {format_duration(waited)}, ran {format_duration(ran)})")
        if attrs.get("executor"):
            parts.append(f"on {attrs['executor']}")
    if node["kind"] == "step":
        if attrs.get("progress"):
            parts.append(attrs["progress"])
        if attrs.get("retries"):
            parts.append("retries " + ", ".join(f"{k} {v}" for k, v in attrs["retries"].items()))
    error = attrs.get("error")
    text = "  ".join(parts)
    return f"{text}: {error.splitlines()[0][:200]}" if error else text


def render_trace_tree(tree: Mapping[str, Any]) -> str:
    """The tree as indented text with durations and offsets from the run's creation."""
    root = tree["root"]
    origin = _time(root["start"])
    trace = tree.get("trace_id") or "not recorded (the run has no stored traceparent)"
    out = [f"trace {trace}", _line(root, origin)]

    def walk(children: Sequence[Mapping[str, Any]], prefix: str) -> None:
        for i, child in enumerate(children):
            last = i == len(children) - 1
            out.append(prefix + ("└── " if last else "├── ") + _line(child, origin))
            walk(child["children"], prefix + ("    " if last else "│   "))

    walk(root["children"], "")
    return "\n".join(out)
