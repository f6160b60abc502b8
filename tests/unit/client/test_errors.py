"""Every error code the trigger can send has its exception in ``legato.client.errors``; a request with a
wrong type is refused by the client, naming the field, before anything is sent."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from legato.bus.topology import Topology
from legato.client import (
    ApiError,
    Conflict,
    InvalidRequest,
    LegatoClient,
    LegatoError,
    NotApplicable,
    NotFound,
    PermissionDenied,
    Timeout,
    Unauthenticated,
    Unavailable,
)
from legato.client.errors import ERRORS, error_for

ROOT = Path(__file__).resolve().parents[3]
# ApiError("code", …) on one line or the next, and RequestRefused("code", …) of the signature checks.
_RAISED = re.compile(r'(?:ApiError|RequestRefused)\(\s*"([a-z_]+)"', re.S)


def codes_sent() -> set[str]:
    """The error codes raised by the trigger and the libraries it serves requests with."""
    found: set[str] = set()
    for folder in (ROOT / "services/legato/trigger", ROOT / "libs/legato"):
        for path in folder.rglob("*.py"):
            found.update(_RAISED.findall(path.read_text()))
    return found


def test_every_code_the_trigger_sends_has_its_exception() -> None:
    codes = codes_sent()
    assert {"not_found", "conflict", "bad_request", "permission_denied", "unauthenticated"} <= codes
    assert sorted(codes - ERRORS.keys()) == []


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("not_found", NotFound),
        ("conflict", Conflict),
        ("bad_request", InvalidRequest),
        ("invalid_params", InvalidRequest),
        ("inactive", NotApplicable),
        ("permission_denied", PermissionDenied),
        ("forbidden", PermissionDenied),
        ("unauthenticated", Unauthenticated),
        ("timeout", Timeout),
        ("unavailable", Unavailable),
    ],
)
def test_a_code_raises_its_class_carrying_the_servers_words(code: str, kind: type[LegatoError]) -> None:
    exc = error_for(code, "what the server said", {"k": 1})
    assert type(exc) is kind and isinstance(exc, LegatoError) and isinstance(exc, ApiError)
    assert (exc.code, exc.message, exc.details) == (code, "what the server said", {"k": 1})


def test_an_unknown_code_is_still_a_legato_error() -> None:
    exc = error_for("brand_new", "from a newer server")
    assert type(exc) is LegatoError and exc.code == "brand_new"


class _NoNats:
    """A connection that must not be used: every call below is refused before sending."""

    async def request(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("sent")


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.start(7), "workflow_id"),
        (lambda c: c.start("wf", params="x=1"), "params"),
        (lambda c: c.start("wf", version="2"), "version"),
        (lambda c: c.get_run("r", steps_limit=1.5), "steps_limit"),
        (lambda c: c.list_runs(since="yesterday"), "since"),
        (lambda c: c.set_tag("t", "ten"), "limit"),
        (lambda c: c.send_signal("s", ["a"]), "params"),
        (lambda c: c.get_dead_letter("12"), "id"),
        (lambda c: c.start_backfill("wf", "2026-01-01", "2026-01-02", concurrency="4"), "concurrency"),
        (lambda c: c.workflow_action("explode", "wf", reason="r"), "verb"),
    ],
)
async def test_a_wrong_type_fails_before_sending_naming_the_field(call: Any, field: str) -> None:
    client = LegatoClient(_NoNats(), Topology(""))  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest) as refused:
        await call(client)
    assert refused.value.details["field"] == field
    assert field in refused.value.message
    assert client.sent == 0
