"""What the client sends again, and with which id: a start, an action and a signal are retried with the
same id (made by the client when the caller gave none), reads are retried, a delete is sent once, and
retries are bounded. (The end-to-end proof, a start whose reply is lost making one run, is in
tests/e2e/test_client.py.)"""

from __future__ import annotations

from typing import Any

import msgspec
import nats.errors
import pytest

from legato.bus.topology import Topology
from legato.client import LegatoClient, Timeout, Unavailable


class _Reply:
    def __init__(self, data: bytes) -> None:
        self.data = data


class _FlakyNats:
    """Fails the first ``failures`` requests (no responders or a timeout), then answers ``answer``."""

    def __init__(self, answer: dict[str, Any], *, failures: int, error: type[Exception]) -> None:
        self.answer = msgspec.json.encode({"result": answer})
        self.failures = failures
        self.error = error
        self.asked: list[dict[str, Any]] = []

    async def request(self, subject: str, data: bytes, timeout: float, headers: dict[str, str]) -> _Reply:
        self.asked.append(msgspec.json.decode(data))
        if len(self.asked) <= self.failures:
            raise self.error()
        return _Reply(self.answer)


START = {"instance_id": "i1", "workflow_id": "wf", "status": "pending", "duplicate": False}


@pytest.mark.parametrize("error", [nats.errors.NoRespondersError, nats.errors.TimeoutError])
async def test_a_start_without_request_id_is_retried_with_one_generated_id(error: type[Exception]) -> None:
    nc = _FlakyNats(START, failures=2, error=error)
    reply = await LegatoClient(nc, Topology(""), retries=3).start("wf")  # type: ignore[arg-type]
    assert reply.instance_id == "i1"
    ids = [body["request_id"] for body in nc.asked]
    assert len(ids) == 3 and len(set(ids)) == 1 and ids[0]


async def test_the_callers_request_id_is_kept() -> None:
    nc = _FlakyNats(START, failures=1, error=nats.errors.TimeoutError)
    await LegatoClient(nc, Topology("")).start("wf", request_id="order-7")  # type: ignore[arg-type]
    assert [body["request_id"] for body in nc.asked] == ["order-7", "order-7"]


async def test_retries_are_bounded_and_end_with_the_error() -> None:
    nc = _FlakyNats({"workflows": []}, failures=100, error=nats.errors.TimeoutError)
    with pytest.raises(Timeout):
        await LegatoClient(nc, Topology(""), retries=2).list_workflows()  # type: ignore[arg-type]
    assert len(nc.asked) == 3


async def test_an_action_and_a_signal_are_retried_with_their_id() -> None:
    accepted = {"action_id": "a", "action": "stop", "workflow_id": "wf", "instance_id": "i1"}
    nc = _FlakyNats(accepted, failures=1, error=nats.errors.NoRespondersError)
    await LegatoClient(nc, Topology("")).stop("i1", reason="r")  # type: ignore[arg-type]
    assert nc.asked[0]["request_id"] == nc.asked[1]["request_id"]
    sent = {"name": "s", "id": "x", "stream_seq": 1, "duplicate": False}
    nc = _FlakyNats(sent, failures=1, error=nats.errors.NoRespondersError)
    await LegatoClient(nc, Topology("")).send_signal("s", {"a": 1})  # type: ignore[arg-type]
    assert nc.asked[0]["id"] == nc.asked[1]["id"]


async def test_a_delete_is_sent_once() -> None:
    deleted = {"workflow_id": "wf", "deleted": True, "result": "deleted"}
    nc = _FlakyNats(deleted, failures=1, error=nats.errors.NoRespondersError)
    with pytest.raises(Unavailable):
        await LegatoClient(nc, Topology("")).delete_workflow("wf", reason="r")  # type: ignore[arg-type]
    assert len(nc.asked) == 1
