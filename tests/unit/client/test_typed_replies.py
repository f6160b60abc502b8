"""The client decodes typed replies from the JSON the trigger sends (the same field names as ever)."""

from typing import Any

import msgspec
import pytest

from legato.bus.topology import Topology
from legato.client import ApiError, LegatoClient
from legato.core.statuses import InstanceStatus
from legato.protocol.replies import ActionAccepted, StartReply


class _Reply:
    def __init__(self, data: bytes) -> None:
        self.data = data


class _FakeNats:
    """Answers every request with one canned reply and remembers what was asked."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = msgspec.json.encode(answer)
        self.asked: list[tuple[str, Any]] = []

    async def request(self, subject: str, data: bytes, timeout: float, headers: dict[str, str]) -> _Reply:
        self.asked.append((subject, msgspec.json.decode(data)))
        return _Reply(self.answer)


async def test_start_returns_a_start_reply() -> None:
    wire = {"instance_id": "i1", "workflow_id": "wf", "status": "pending", "duplicate": False}
    nc = _FakeNats({"result": wire})
    reply = await LegatoClient(nc, Topology("")).start("wf", {"x": 1}, request_id="r1")  # type: ignore[arg-type]
    assert reply == StartReply(
        instance_id="i1", workflow_id="wf", status=InstanceStatus.PENDING, duplicate=False
    )
    assert msgspec.to_builtins(reply) == wire  # the same JSON the trigger sends
    assert nc.asked == [
        ("legato.api.instance.start", {"workflow_id": "wf", "params": {"x": 1}, "request_id": "r1"})
    ]


async def test_an_action_reply_and_an_error_reply() -> None:
    accepted = {
        "accepted": True,
        "action_id": "a1",
        "action": "skip_step",
        "workflow_id": "wf",
        "instance_id": "i1",
    }
    client = LegatoClient(_FakeNats({"result": accepted}), Topology(""))  # type: ignore[arg-type]
    reply = await client.instance_action("skip_step", "i1", reason="why", step_id="s")
    assert isinstance(reply, ActionAccepted) and reply.action_id == "a1" and reply.instance_id == "i1"

    failing = LegatoClient(
        _FakeNats({"error": {"code": "not_applicable", "message": "no", "details": {"status": "queued"}}}),  # type: ignore[arg-type]
        Topology(""),
    )
    with pytest.raises(ApiError) as err:
        await failing.instance_action("restart", "i1", reason="why")
    assert err.value.code == "not_applicable" and err.value.details == {"status": "queued"}
    with pytest.raises(ApiError) as err:
        await failing.call("instance.get", {"instance_id": "i1"})
    assert err.value.code == "not_applicable"


async def test_a_reply_of_the_wrong_shape_is_an_api_error() -> None:
    client = LegatoClient(_FakeNats({"result": {"instance_id": "i1"}}), Topology(""))  # type: ignore[arg-type]
    with pytest.raises(ApiError) as err:
        await client.start("wf")
    assert err.value.code == "bad_reply"
    raw = await client.call("instance.start", {"workflow_id": "wf"})
    assert raw == {"instance_id": "i1"}
