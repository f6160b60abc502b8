"""How the CLI puts a run's or step's reason into words, whatever version of the services wrote it."""

from __future__ import annotations

from typing import Any

import pytest

from legato.cli.render import reason_text


@pytest.mark.parametrize(
    ("reason", "text"),
    [
        (None, ""),
        ({}, ""),
        (
            {
                "code": "waiting_for_permit",
                "tag": "db",
                "limit": 1,
                "in_use": 1,
                "message": "waiting for tag permit db",
            },
            "waiting for tag permit db",
        ),
        ({"code": "superseded", "by": "r2"}, "superseded (by=r2)"),
        ({"code": "condition_false", "from": ["a"]}, "condition_false (from=['a'])"),
        ({"code": "blocked", "by": None}, "blocked"),
        ({"code": "queued", "why": "restarted"}, "queued (why=restarted)"),
        ({"code": "run_timeout"}, "run_timeout"),
        # A reason from a newer version: its message, or its code and fields, as they came.
        ({"code": "waiting_for_moon", "phase": "full"}, "waiting_for_moon (phase=full)"),
        ({"code": "waiting_for_moon", "message": "waiting for the full moon"}, "waiting for the full moon"),
        ("stopped by hand", "stopped by hand"),
    ],
)
def test_reason_text(reason: Any, text: str) -> None:
    assert reason_text(reason) == text
