"""A starting service waits, bounded, while JetStream is not ready (a cluster still electing leaders),
and fails at once on anything that is not transient."""

from __future__ import annotations

import nats.errors
import pytest
from nats.js.errors import APIError, BadRequestError, ServiceUnavailableError

from legato.bus.streams import settled, transient


async def test_transient_failures_are_retried_until_the_step_succeeds() -> None:
    failures: list[BaseException] = [
        nats.errors.TimeoutError(),
        ServiceUnavailableError(),
        APIError(code=503, err_code=10008, description="JetStream system temporarily unavailable"),
    ]
    calls = 0

    async def step() -> str:
        nonlocal calls
        calls += 1
        if failures:
            raise failures.pop(0)
        return "ok"

    assert await settled(step, "stream X", timeout=10) == "ok"
    assert calls == 4


async def test_a_permanent_error_is_raised_at_once() -> None:
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        raise BadRequestError(code=400, err_code=10058, description="stream name already in use")

    with pytest.raises(BadRequestError):
        await settled(step, "stream X", timeout=10)
    assert calls == 1


async def test_the_wait_is_bounded() -> None:
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        raise nats.errors.NoRespondersError()

    with pytest.raises(nats.errors.NoRespondersError):
        await settled(step, "stream X", timeout=0.5)
    assert 1 < calls < 10


def test_what_counts_as_transient() -> None:
    assert transient(TimeoutError())
    assert transient(nats.errors.ConnectionReconnectingError())
    assert not transient(APIError(code=404, err_code=10059, description="stream not found"))
    assert not transient(ValueError("bad config"))
