"""``keep_work_queues_open`` against the answers a nats-server may give when the keeper is there already.

The integration test (``tests/integration/test_bus_store.py``) puts the keepers on the nats-server we
ship, which answers "wrong last sequence: N" (10071). Some nats-server versions answer the same refusal
without the number (10164), as nats-py's own KV ``create`` allows for; a scheduler started against one of
those must not fail at start-up for a keeper that is already there. Any other refusal still fails."""

from __future__ import annotations

from typing import Any

import pytest
from nats.js.errors import APIError

from legato.bus.streams import keep_work_queues_open
from legato.bus.topology import Topology


class Refusing:
    """Answers every publish with one JetStream API error."""

    def __init__(self, err_code: int) -> None:
        self.err_code = err_code
        self.subjects: list[str] = []

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> Any:
        assert headers == {"Nats-Expected-Last-Subject-Sequence": "0"}
        self.subjects.append(subject)
        raise APIError(code=400, description="wrong last sequence", err_code=self.err_code)


@pytest.mark.parametrize("err_code", [10071, 10164])
async def test_a_keeper_already_there_is_left_as_it_is(err_code: int) -> None:
    js = Refusing(err_code)
    assert await keep_work_queues_open(js, Topology()) == 0  # type: ignore[arg-type]
    assert len(js.subjects) == 3  # each stream asked once


async def test_any_other_refusal_fails_the_start() -> None:
    with pytest.raises(APIError) as raised:
        await keep_work_queues_open(Refusing(10077), Topology())  # type: ignore[arg-type]
    assert raised.value.err_code == 10077
