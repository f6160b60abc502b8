"""``legato show RUN --trace``: the span tree built from a stored run (a real ``instance.get`` reply)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from legato.cli.main import build_parser
from legato.cli.trace_view import build_trace_tree, format_duration, render_trace_tree

REPLY = json.loads((Path(__file__).parent / "instance_retry_foreach.json").read_text())


def walk(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(n for c in node["children"] for n in walk(c))]


def test_tree_mirrors_the_run_span_contract() -> None:
    tree = build_trace_tree(REPLY)
    assert tree["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert tree["instance_id"] == REPLY["instance_id"]
    root = tree["root"]
    assert root["name"] == "workflow.run" and root["status"] == "succeeded"
    assert root["attributes"]["legato.workflow_id"] == "mixed"
    assert root["attributes"]["legato.trigger_kind"] == "api"
    assert root["duration_s"] == json_seconds(REPLY["created_at"], REPLY["ended_at"])
    names = [c["name"] for c in root["children"]]
    assert names == ["run.queue_wait", "step", "step", "step"]
    flaky, each, done = root["children"][1:]
    assert [flaky["label"], each["label"], done["label"]] == ["step flaky", "step each", "step done"]
    # Attempts and the retry between them, in time order, under their step.
    assert [(c["name"], c["status"]) for c in flaky["children"]] == [
        ("step.attempt", "failed"),
        ("step.retry_scheduled", None),
        ("step.attempt", "succeeded"),
    ]
    first = flaky["children"][0]
    assert first["attributes"]["legato.attempt"] == 1
    assert first["attributes"]["error"] == "exit code 3"
    assert first["attributes"]["waited_s"] is not None and first["attributes"]["ran_s"] is not None
    assert first["start"] == REPLY["steps"][0]["attempts"][0]["dispatched_at"]
    assert flaky["attributes"]["retries"] == {"error": 1}
    assert each["attributes"]["progress"] == "foreach 3/3 succeeded"
    assert [c["name"] for c in done["children"]] == ["step.attempt"]
    # Every node with both times has a duration; every child starts within its run.
    for node in walk(root):
        if node["start"] and node["end"]:
            assert node["duration_s"] is not None and node["duration_s"] >= 0
        if node is not root and node["start"]:
            assert node["start"] >= root["start"]
    json.dumps(tree)  # plain data for --json


def json_seconds(a: str, b: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def test_rendered_tree_is_indented_with_durations() -> None:
    text = render_trace_tree(build_trace_tree(REPLY))
    lines = text.splitlines()
    assert lines[0] == "trace 4bf92f3577b34da6a3ce929d0e0e4736"
    assert lines[1].startswith(f"run {REPLY['instance_id']} (mixed v1)  SUCCEEDED  ")
    assert lines[2].startswith("├── queue wait")
    assert any(line.startswith("│   ├── attempt 1  FAILED") and "exit code 3" in line for line in lines)
    assert any(line.startswith("│   ├── step.retry_scheduled: step flaky error failure") for line in lines)
    assert any(line.startswith("│   └── attempt 2  SUCCEEDED") for line in lines)
    assert lines[-1].startswith("    └── attempt 1  SUCCEEDED")
    assert "@+" in lines[-1] and "waited" in lines[-1]


def test_a_run_still_queued_or_without_a_trace() -> None:
    info = copy.deepcopy(REPLY)
    info.update(status="queued", started_at=None, ended_at=None, trace_id=None, traceparent=None, steps=[])
    info["timeline"] = info["timeline"][:1]
    tree = build_trace_tree(info)
    root = tree["root"]
    assert root["duration_s"] is None
    [wait] = root["children"]
    assert wait["name"] == "run.queue_wait" and wait["end"] is None
    text = render_trace_tree(tree)
    assert "not recorded" in text.splitlines()[0]
    assert "queue wait (not started)  …" in text


def test_operator_actions_and_run_events_hang_under_the_run() -> None:
    info = copy.deepcopy(REPLY)
    info["timeline"].append(
        {
            "at": info["ended_at"],
            "step_id": None,
            "event": "queue_unblocked",
            "message": "unblocked by ops",
            "actor": "alice",
            "details": None,
        }
    )
    root = build_trace_tree(info)["root"]
    last = root["children"][-1]
    assert last["name"] == "operator.action" and last["attributes"]["actor"] == "alice"


def test_pending_steps_come_last_without_times() -> None:
    info = copy.deepcopy(REPLY)
    info["steps"].insert(0, {"step_id": "later", "status": "pending", "attempts": [], "created_at": None})
    root = build_trace_tree(info)["root"]
    assert root["children"][-1]["label"] == "step later"
    assert root["children"][-1]["duration_s"] is None


def test_durations_read_well() -> None:
    assert format_duration(None) == "…"
    assert format_duration(0.0123) == "12ms"
    assert format_duration(2.5) == "2.50s"
    assert format_duration(125) == "2m05.0s"
    assert format_duration(7380) == "2h03m"


def test_show_takes_trace_and_json() -> None:
    args = build_parser().parse_args(["show", "RUN", "--trace", "--json"])
    assert args.trace and args.json and args.instance == "RUN"
    assert not build_parser().parse_args(["show", "RUN"]).trace
