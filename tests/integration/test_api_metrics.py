"""The trigger's API counts every request by endpoint and result (error code), against real servers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from legato.client import ApiError, LegatoClient
from legato.config.settings import Settings
from legato.runtime.host import ServiceHost
from legato.telemetry import configure_metrics, shutdown_metrics
from legato.trigger.api import ApiService
from tests.support.stack import wait_api


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    r = InMemoryMetricReader()
    configure_metrics("trigger", readers=[r])
    yield r
    shutdown_metrics()


def api_counts(reader: InMemoryMetricReader) -> dict[tuple[str, str], float]:
    data = reader.get_metrics_data()
    out: dict[tuple[str, str], float] = {}
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == "legato.api.requests":
                    for p in m.data.data_points:
                        attrs = dict(p.attributes or {})
                        out[(str(attrs["endpoint"]), str(attrs["result"]))] = p.value  # type: ignore[union-attr]
    return out


async def test_api_requests_are_counted_by_endpoint_and_result(
    settings: Settings, reader: InMemoryMetricReader
) -> None:
    async with ServiceHost("trigger", settings, configure_process=False) as host:
        host.add(ApiService(host.nc, host.pool, host.topology, wake_relay=host.wake_relay))
        task = asyncio.create_task(host.run(handle_signals=False))
        client = await LegatoClient.connect(settings.nats_url, namespace=settings.namespace, actor="test")
        try:
            await wait_api(client)
            await client.push("id: counted\nsteps:\n  - {id: a, type: noop}\n")
            for _ in range(2):
                await client.call("workflow.get", {"workflow_id": "counted"})
            with pytest.raises(ApiError):
                await client.call("workflow.get", {"workflow_id": "nope"})
            with pytest.raises(ApiError):
                await client.call("instance.get", {"no": "fields"})
        finally:
            await client.close()
            host.request_shutdown()
            await asyncio.wait_for(task, 30)
    got = api_counts(reader)
    assert got[("workflow.get", "ok")] == 2
    assert got[("workflow.get", "not_found")] == 1
    assert got[("instance.get", "bad_request")] == 1
    assert got[("workflow.push", "ok")] == 1
