"""Progress records of foreach, loop and subworkflow steps: the JSON they had as dicts, and stored
records this version cannot read kept as they were."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from legato.core.progress import (
    ForeachProgress,
    LoopProgress,
    OtherProgress,
    SubworkflowProgress,
    decode_progress,
    encode_progress,
    kind_of,
)

FOREACH_STARTED: dict[str, Any] = {
    "kind": "foreach",
    "total": 3,
    "next": 0,
    "running": 0,
    "succeeded": 0,
    "failed": 0,
    "ignored": 0,
    "concurrency": 20,
    "on_failure": "finish_others_then_fail",
    "as": "item",
    "retry": [],
    "failed_items": [],
    "children": {},
    "run": 1,
}

STORED: list[dict[str, Any]] = [
    FOREACH_STARTED,
    {**FOREACH_STARTED, "next": 3, "failed": 1, "failed_items": [2], "children": {"1": ["wf", "r-1"]}},
    {**FOREACH_STARTED, "retry": [2], "run": 2, "stopping": False},
    {"kind": "loop", "index": 2, "max": 5, "last": {"body": {"a": 1}}},
    {"kind": "subworkflow", "workflow": "child-wf", "child": "r-9"},
]


def test_a_new_foreach_record_is_the_json_the_scheduler_always_wrote() -> None:
    prog = ForeachProgress(total=3, concurrency=20, on_failure="finish_others_then_fail", as_="item")
    assert encode_progress(prog) == FOREACH_STARTED
    assert msgspec.json.decode(msgspec.json.encode(prog)) == FOREACH_STARTED  # as the repository writes it


@pytest.mark.parametrize("row", STORED, ids=lambda r: str(r["kind"]))
def test_stored_records_round_trip(row: dict[str, Any]) -> None:
    prog = decode_progress(row)
    assert isinstance(prog, ForeachProgress | LoopProgress | SubworkflowProgress)
    assert kind_of(prog) == row["kind"]
    assert encode_progress(prog) == row


def test_records_mutate_in_place_as_their_runtime_advances() -> None:
    prog = decode_progress(dict(FOREACH_STARTED))
    assert isinstance(prog, ForeachProgress)
    prog.next += 1
    prog.running += 1
    prog.children["0"] = ["wf", "r-0"]
    assert encode_progress(prog) == {
        **FOREACH_STARTED,
        "next": 1,
        "running": 1,
        "children": {"0": ["wf", "r-0"]},
    }


def test_an_older_foreach_record_without_a_run_number_is_run_one() -> None:
    old = {k: v for k, v in FOREACH_STARTED.items() if k != "run"}
    prog = decode_progress(old)
    assert isinstance(prog, ForeachProgress) and prog.run == 1


@pytest.mark.parametrize(
    "row",
    [
        {"kind": "map_reduce", "total": 1},
        {"kind": "loop", "index": 0, "max": 5, "last": {}, "until": "x"},
        {"kind": "subworkflow", "workflow": "w"},
        {"total": 1},
    ],
)
def test_records_this_version_cannot_read_are_kept(row: dict[str, Any]) -> None:
    prog = decode_progress(row)
    assert isinstance(prog, OtherProgress)
    assert kind_of(prog) == row.get("kind")
    assert encode_progress(prog) == row
    assert decode_progress(None) is None and encode_progress(None) is None
