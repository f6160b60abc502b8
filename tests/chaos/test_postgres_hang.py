"""A Postgres outage where connections hang rather than refuse: every Postgres process is SIGSTOPped
mid-load (the postmaster and each backend, so open connections and new ones alike get no answer), then
resumed. Every accepted run still ends, each step body ran exactly once by its own ledger, and nothing
was dead-lettered or left pending."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections import Counter
from pathlib import Path

import asyncpg
import msgspec
import psutil
import pytest

from legato.config.settings import Settings
from legato.devstack import EmbeddedPostgres
from legato.store import ensure_database, migrate_url
from tests.support.stack import running_stack, wait_for

pytestmark = pytest.mark.slow

WORKFLOW = """
id: through-the-outage
run_strategy: {{type: parallel, max_concurrency: 4}}
steps:
  - id: body
    type: shell
    command: 'sleep 0.3; echo "$LEGATO_INSTANCE_ID" >> {ledger}'
"""

RUNS = 24
HANG = 15.0  # longer than the lease time and the executors' fence: ownership moves, nothing runs twice


def postgres_tree(server: EmbeddedPostgres) -> list[psutil.Process]:
    assert server.proc is not None
    root = psutil.Process(server.proc.pid)
    return [root, *root.children(recursive=True)]


async def test_runs_end_exactly_once_across_a_postgres_that_hangs(settings: Settings, tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg" / "data", preferred_port=0, durable=False).start()
    stopped: list[psutil.Process] = []
    try:
        db_url = server.url(f"hang_{uuid.uuid4().hex[:8]}")
        await ensure_database(db_url)
        await migrate_url(db_url)
        own = msgspec.structs.replace(settings, database_url=db_url)
        ledger = tmp_path / "ledger"
        async with running_stack(own, tmp_path / "stack") as (_stack, client):
            await client.push(WORKFLOW.format(ledger=ledger))
            runs = [await client.start("through-the-outage", request_id=f"r{i}") for i in range(RUNS)]
            # Some runs are done, others queued or mid-step: then the database stops answering.
            for _ in range(200):
                if ledger.exists() and len(ledger.read_text().splitlines()) >= 4:
                    break
                await asyncio.sleep(0.05)
            stopped = postgres_tree(server)
            for proc in stopped:
                proc.send_signal(signal.SIGSTOP)
            before = len(ledger.read_text().splitlines())
            assert before < RUNS, "every run ended before the outage: nothing was tested"
            await asyncio.sleep(HANG)
            for proc in stopped:
                proc.send_signal(signal.SIGCONT)
            stopped = []
            ended = [await wait_for(client, r.instance_id, timeout=180) for r in runs]
        assert [e["status"] for e in ended] == ["succeeded"] * RUNS, [e["status"] for e in ended]
        bodies = Counter(ledger.read_text().split())
        assert set(bodies) == {r.instance_id for r in runs}
        assert all(n == 1 for n in bodies.values()), bodies  # no step body ran twice
        conn = await asyncpg.connect(db_url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM dead_letter") == 0
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM step_attempt WHERE status IN ('dispatched', 'running')"
                )
                == 0
            )
        finally:
            await conn.close()
    finally:
        for proc in stopped:
            proc.send_signal(signal.SIGCONT)
        server.stop()
