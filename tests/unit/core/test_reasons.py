"""The reason union: every code round-trips to the JSON it had as a dict, and old or foreign rows read
without failing and write back unchanged."""

from __future__ import annotations

import typing
from typing import Any

import msgspec
import pytest

from legato.core import reasons
from legato.core.reasons import (
    PERMIT_WAITS,
    Blocked,
    ConditionFalse,
    KnownReason,
    OtherReason,
    Paused,
    Queued,
    WaitingForPermit,
    code_of,
    decode_reason,
    encode_reason,
    message_of,
)

# One stored shape per code, as the scheduler and trigger wrote them when reasons were dicts.
STORED: list[dict[str, Any]] = [
    {"code": "bad_params"},
    {"code": "queued", "why": "restarted"},
    {"code": "queued", "strategy": "parallel", "limit": 2},
    {
        "code": "queued",
        "strategy": "parallel",
        "position": 1,
        "behind": None,
        "limit": 2,
        "held_by": ["r1"],
        "message": "queued at position 1; concurrency limit 2 held by runs r1",
    },
    {"code": "paused"},
    {"code": "paused", "why": "max_concurrency is 0"},
    {"code": "paused", "by": None, "message": "workflow paused"},
    {
        "code": "paused",
        "strategy": "serial",
        "position": 2,
        "behind": "r1",
        "limit": 1,
        "held_by": [],
        "message": "workflow paused by ann: deploy",
        "paused_by": "ann",
    },
    {"code": "blocked", "by": "r0"},
    {
        "code": "blocked",
        "strategy": "strict_sequential",
        "position": 1,
        "behind": None,
        "limit": 1,
        "held_by": [],
        "blocked_by": "r0",
        "blocked_since": None,
        "message": "blocked by failed run r0",
    },
    {
        "code": "waiting_for_stop",
        "runs": ["r1"],
        "attempts": ["a1"],
        "until": "2026-01-01T00:00:00+00:00",
        "message": "waiting for run r1 to confirm it stopped",
    },
    {"code": "unknown_version"},
    {"code": "inactive"},
    {"code": "first_only", "running": "r1"},
    {"code": "superseded", "by": "r2"},
    {"code": "step_failed", "steps": ["a", "b"]},
    {"code": "run_timeout"},
    {"code": "parent_stopped", "why": "run ended stopped"},
    {"code": "operator", "action": "kill", "by": "ann", "why": "stuck"},
    {"code": "missed", "policy": "none", "late_seconds": 90, "message": "missed fire, 90s late"},
    {"code": "upstream_failed", "steps": ["a"]},
    {"code": "condition_false", "from": ["a", "b"]},
    {"code": "waiting_for_dispatch_slot", "queue": "default", "limit": 64, "message": "waiting to be sent"},
    {"code": "retry_backoff", "kind": "error", "retry": 1, "of": 3, "at": "2026-01-01T00:00:05+00:00"},
    {"code": "cancelled", "why": "run ended stopped"},
    {
        "code": "waiting_for_signals",
        "signals": ["go", "ok"],
        "missing": ["ok"],
        "message": "waiting for signals ok",
    },
    {"code": "waiting_for_step_concurrency", "limit": 2, "in_use": 2, "message": "waiting for a step slot"},
    {
        "code": "waiting_for_permit",
        "tag": "db",
        "limit": 1,
        "in_use": 1,
        "message": "waiting for tag permit db",
    },
    {
        "code": "waiting_for_permit",
        "tag": "db",
        "limit": None,
        "in_use": 0,
        "message": "m",
        "held_by": ["r/s"],
    },
    {"code": "skipped_by_operator", "by": "ann", "why": "not needed"},
    {"code": "restart", "run": 2},
]


def test_every_code_has_a_stored_example() -> None:
    codes = {cls.__struct_config__.tag for cls in typing.get_args(KnownReason)}
    assert codes == {row["code"] for row in STORED}


@pytest.mark.parametrize("row", STORED, ids=lambda r: str(r["code"]))
def test_every_code_round_trips_to_the_same_json(row: dict[str, Any]) -> None:
    reason = decode_reason(row)
    assert reason is not None and not isinstance(reason, OtherReason), reason
    assert code_of(reason) == row["code"]
    assert encode_reason(reason) == row
    # The scheduler's repository hands the Struct straight to msgspec's encoder: the same JSON.
    assert msgspec.json.decode(msgspec.json.encode(reason)) == row
    assert message_of(reason) == (row.get("message") or None)


def test_fields_set_by_only_some_builders_are_absent_not_null() -> None:
    assert encode_reason(Queued(why="restarted")) == {"code": "queued", "why": "restarted"}
    assert encode_reason(Paused()) == {"code": "paused"}
    assert encode_reason(Blocked(by=None)) == {"code": "blocked", "by": None}
    assert encode_reason(ConditionFalse(from_=["a"])) == {"code": "condition_false", "from": ["a"]}


@pytest.mark.parametrize(
    "row",
    [
        {"code": "waiting_for_moon", "phase": "full"},  # a code a newer version added
        {"code": "queued", "strategy": "parallel", "eta": 5},  # a field a newer version added
        {"code": "restart", "run": "two"},  # a value of another type
        {"code": "waiting_for_permit", "tag": "db"},  # required fields missing
        {"why": "no code at all"},
        {"code": 7},
    ],
)
def test_rows_this_version_cannot_read_exactly_are_kept_as_they_were(row: dict[str, Any]) -> None:
    reason = decode_reason(row)
    assert isinstance(reason, OtherReason)
    assert reason.code == (row["code"] if isinstance(row.get("code"), str) else None)
    assert encode_reason(reason) == row
    assert reason.raw is not row  # a copy: the caller's dict may change without changing the reason


def test_non_objects_and_none_never_raise() -> None:
    assert decode_reason(None) is None and encode_reason(None) is None
    legacy = decode_reason("stopped by hand")
    assert isinstance(legacy, OtherReason) and message_of(legacy) == "stopped by hand"
    assert code_of(legacy) is None


def test_message_of_unknown_rows_and_reasons_without_one() -> None:
    assert message_of(decode_reason({"code": "new", "message": "why"}) or Queued()) == "why"
    assert message_of(Queued()) is None
    assert message_of(WaitingForPermit(tag="t", limit=1, in_use=1, message="")) is None


def test_permit_waits_are_the_step_waits_a_permit_ends() -> None:
    waits = {cls.__struct_config__.tag for cls in PERMIT_WAITS}
    assert waits == {"waiting_for_step_concurrency", "waiting_for_permit"}
    assert all(cls in typing.get_args(reasons.KnownReason) for cls in PERMIT_WAITS)
