"""``instance.get`` of a run whose outputs are megabytes sends them only when they could fit.

A foreach's outputs hold every iteration's: 1.7 MB of JSON for 100,000 noop iterations, in the run's
row and in its step's. The reply cuts such a value to a marker, but the whole value was sent by
Postgres, decoded and encoded again to learn that (50 to 100 ms a value). Now Postgres measures a large
value's text first and sends only its size and start (``replies.capped``); a value that could fit is
sent and cut, or not, exactly as before.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import pytest

from legato.store.pool import close_pool, create_pool
from legato.trigger.instances import get_instance
from legato.trigger.replies import FIELD_LIMIT, PREVIEW_CHARS

BUDGET = 1_000_000
RUN_LIMIT = max(FIELD_LIMIT, BUDGET // 8)  # what get_instance allows a run's own params and outputs

HUGE = {"iterations": [{"nothing": {}} for _ in range(100_000)]}  # as a 100,000-iteration foreach's
# Compact JSON over the run's limit, Postgres's text under 1.5 times it: sent, and cut in Python.
OVER = ["x" * 8 for _ in range(RUN_LIMIT // 11 + 200)]
# Compact JSON under the run's limit, Postgres's text over it ("1, 1, …"): sent whole, and shown whole.
UNDER = [1] * (RUN_LIMIT // 2 - 100)


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    pool = await create_pool(database_url, max_size=1, generic_plans=True)  # as the API's
    c = await pool.acquire()
    await c.execute(
        "INSERT INTO workflow_instance (id, workflow_id, version, trigger_key, trigger, status, params, "
        "run_params, outputs) VALUES ('big', 'wf', 1, 'k', '{}', 'succeeded', $1, $2, $3)",
        OVER,
        UNDER,
        HUGE,
    )
    await c.execute(
        "INSERT INTO step_run (instance_id, step_id, status, params, outputs) VALUES "
        "('big', 'fan', 'succeeded', $1, $2), ('big', 'small', 'succeeded', $3, $4)",
        {"n": 100_000},
        HUGE,
        {"a": 1},
        ["y" * 1000 for _ in range(50)],  # 50 KB: stored compressed under 4 KB, whole in the reply
    )
    yield c
    await pool.release(c)
    await close_pool(pool)


def text_of(value: Any) -> str:
    """Postgres's text of a jsonb value: a space after each ``,`` and ``:`` (no key or string here has one)."""
    return msgspec.json.encode(value).decode().replace(",", ", ").replace(":", ": ")


async def test_a_huge_value_is_measured_in_postgres_and_shown_as_a_marker(conn: asyncpg.Connection) -> None:
    got = await get_instance(conn, "big", order=["fan", "small"], budget=BUDGET)
    huge_text = text_of(HUGE)
    marker = {"truncated": True, "bytes": len(huge_text), "preview": huge_text[:PREVIEW_CHARS]}
    assert got["outputs"] == marker
    steps = {s["step_id"]: s for s in got["steps"]}
    assert steps["fan"]["outputs"] == marker
    assert steps["fan"]["params"] == {"n": 100_000}
    assert steps["small"]["params"] == {"a": 1}
    assert steps["small"]["outputs"] == ["y" * 1000 for _ in range(50)]


async def test_a_value_that_could_fit_is_cut_or_kept_exactly_as_before(conn: asyncpg.Connection) -> None:
    got = await get_instance(conn, "big", budget=BUDGET)
    compact = msgspec.json.encode(OVER)
    assert len(compact) > RUN_LIMIT and len(text_of(OVER)) <= RUN_LIMIT * 3 // 2
    assert got["params"] == {
        "truncated": True,
        "bytes": len(compact),
        "preview": compact.decode()[:PREVIEW_CHARS],
    }
    assert len(msgspec.json.encode(UNDER)) <= RUN_LIMIT < len(text_of(UNDER))
    assert got["run_params"] == UNDER
