"""The scheduler's bulk writes against a real PostgreSQL: list-valued jsonb (a signal run's trace links)
beside NULLs in one batch."""

from __future__ import annotations

from datetime import UTC, datetime

from legato.scheduler.repository import upsert_instances
from legato.scheduler.state import InstanceState
from legato.store import create_pool


def instance(run_id: str, links: list[str] | None) -> InstanceState:
    return InstanceState(
        id=run_id,
        workflow_id="wf",
        version=1,
        trigger_key=f"k-{run_id}",
        trigger={"kind": "signal" if links else "api", "signals": [{"name": "a", "id": "1"}]},
        status="queued",
        params={},
        run_params={"xs": [1, 2]},
        created_at=datetime.now(UTC),
        trace_links=links,
    )


async def test_runs_with_and_without_trace_links_are_written_in_one_batch(database_url: str) -> None:
    pool = await create_pool(database_url, max_size=1)
    try:
        runs = [
            instance(
                "a", ["00-" + "1" * 32 + "-" + "2" * 16 + "-01", "00-" + "3" * 32 + "-" + "4" * 16 + "-01"]
            ),
            instance("b", None),
            instance("c", ["00-" + "5" * 32 + "-" + "6" * 16 + "-01"]),
        ]
        async with pool.acquire() as conn, conn.transaction():
            await upsert_instances(conn, runs)
        async with pool.acquire() as conn:
            rows = {
                r["id"]: r
                for r in await conn.fetch(
                    "SELECT id, trace_links, run_params, trigger FROM workflow_instance"
                )
            }
        assert rows["a"]["trace_links"] == runs[0].trace_links
        assert rows["b"]["trace_links"] is None
        assert rows["c"]["trace_links"] == runs[2].trace_links
        assert rows["a"]["run_params"] == {"xs": [1, 2]}
        assert rows["b"]["trigger"]["signals"] == [{"name": "a", "id": "1"}]
    finally:
        await pool.close()
