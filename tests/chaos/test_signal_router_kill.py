"""Joined signal triggers under duress: thousands of signals for two- and three-leg joins in random order,
every signal sent twice with its id and once more under another id, every delivery applied twice, and the
signal router ``kill -9``ed twice while they arrive. Runs must equal complete tuples, exactly."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import asyncpg
import pytest

from legato.bus.connection import connect_with
from legato.config.settings import Settings
from tests.support.stack import running_stack

pytestmark = pytest.mark.slow

PAIR = """
id: pair
run_strategy: {type: parallel, max_concurrency: 1000}
params:
  key: {type: string, required: true}
  left: {type: int, required: true}
  right: {type: int, required: true}
triggers:
  - type: signal
    id: both
    signals:
      - name: left_ready
      - name: right_ready
        match: {ok: true}
    join: [key]
    params:
      key: "${signals.left_ready.key}"
      left: "${signals.left_ready.n}"
      right: "${signals.right_ready.n}"
steps:
  - id: only
    type: noop
"""

TRIPLE = """
id: triple
run_strategy: {type: parallel, max_concurrency: 1000}
params:
  date: {type: string, required: true}
  region: {type: string, required: true}
  total: {type: int, required: true}
triggers:
  - type: signal
    id: all-three
    signals:
      - name: a_done
      - name: b_done
      - name: c_done
    join: [date, region]
    params:
      date: "${signals.a_done.date}"
      region: "${signals.b_done.region}"
      total: "${signals.a_done.n + signals.b_done.n + signals.c_done.n}"
steps:
  - id: only
    type: noop
"""

PAIRS, PAIRS_HALF = 700, 60  # complete tuples, and tuples with one leg only
TRIPLES, TRIPLES_PARTIAL = 300, 40  # complete, and with two legs of three


def build_signals(
    rng: random.Random,
) -> tuple[list[tuple[str, str, dict[str, object]]], dict[str, object], dict[tuple[str, str], int]]:
    """(subject name, signal id, body) for everything, and the expected runs' params."""
    out: list[tuple[str, str, dict[str, object]]] = []
    pairs: dict[str, object] = {}
    triples: dict[tuple[str, str], int] = {}
    for i in range(PAIRS + PAIRS_HALF):
        key = f"k{i}"
        out.append(("left_ready", f"l-{key}", {"key": key, "n": i}))
        if i < PAIRS:
            out.append(("right_ready", f"r-{key}", {"key": key, "n": 2 * i, "ok": True}))
            pairs[key] = (i, 2 * i)
        else:
            out.append(("right_ready", f"r-{key}", {"key": key, "n": 1, "ok": False}))  # never matches
    for j in range(TRIPLES + TRIPLES_PARTIAL):
        date, region = f"2026-01-{1 + j % 28:02d}", f"r{j}"
        legs = ["a_done", "b_done", "c_done"] if j < TRIPLES else ["a_done", "c_done"]
        for n, leg in enumerate(legs):
            out.append((leg, f"{leg}-{j}", {"date": date, "region": region, "n": j + n}))
        if j < TRIPLES:
            triples[(date, region)] = 3 * j + 3
    # Every signal twice under its id (JetStream or the router drops the copy) and once more under
    # another id: a distinct signal for the same leg of the same tuple, which must not fire it again.
    copies = [s for s in out for _ in range(2)] + [(n, f"{i}-again", b) for n, i, b in out]
    rng.shuffle(copies)
    return copies, pairs, triples


async def test_joins_fire_exactly_once_through_router_kill9(settings: Settings, tmp_path: Path) -> None:
    rng = random.Random(20261129)
    sends, pairs, triples = build_signals(rng)
    extra = {"LEGATO_TEST_DELIVER_TWICE": "1"}
    async with running_stack(settings, tmp_path, extra_env=extra) as (stack, client):
        await client.push(PAIR)
        await client.push(TRIPLE)
        nc = await connect_with(settings, name="legato-test")
        js = nc.jetstream()
        prefix = f"{settings.namespace}.legato.signal."
        router = stack["signal_router"]
        third = len(sends) // 3

        async def publish(part: list[tuple[str, str, dict[str, object]]]) -> None:
            for start in range(0, len(part), 200):
                chunk = part[start : start + 200]
                await asyncio.gather(
                    *(
                        js.publish(prefix + name, json.dumps(body).encode(), headers={"Nats-Msg-Id": sid})
                        for name, sid, body in chunk
                    )
                )

        try:
            for k in range(3):
                part = sends[k * third : (k + 1) * third if k < 2 else len(sends)]
                # Four publishers at once, interleaved.
                await asyncio.gather(*(publish(part[w::4]) for w in range(4)))
                if k < 2:
                    await asyncio.sleep(0.3)  # mid-batch for whatever is still in flight
                    router.kill9()
                    await asyncio.sleep(0.5)
                    router.start()
        finally:
            await nc.close()
        conn = await asyncpg.connect(settings.database_url)
        try:
            want = len(pairs) + len(triples)
            distinct = len({(n, i) for n, i, _ in sends})
            # Deliveries the killed router held come back after the consumer's ack wait.
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                have = await conn.fetchval(
                    "SELECT count(*) FROM workflow_instance WHERE workflow_id IN ('pair', 'triple')"
                )
                if have >= want and await conn.fetchval("SELECT count(*) FROM signal") >= distinct:
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(3.0)  # anything extra would show up now
            rows = await conn.fetch(
                "SELECT workflow_id, params::text AS params, trigger_key FROM workflow_instance "
                "WHERE workflow_id IN ('pair', 'triple')"
            )
            stored = await conn.fetchval("SELECT count(*) FROM signal")
            fires = await conn.fetchval("SELECT count(*) FROM signal_trigger_fire")
            dead = await conn.fetchval("SELECT count(*) FROM dead_letter")
        finally:
            await conn.close()
        assert router.starts == 3
        assert dead == 0
        assert stored == distinct
        assert fires == want
        got_pairs = {}
        got_triples = {}
        for r in rows:
            p = json.loads(r["params"])
            if r["workflow_id"] == "pair":
                assert p["key"] not in got_pairs, f"pair {p['key']} started twice"
                got_pairs[p["key"]] = (p["left"], p["right"])
            else:
                key = (p["date"], p["region"])
                assert key not in got_triples, f"triple {key} started twice"
                got_triples[key] = p["total"]
        assert got_pairs == pairs
        assert got_triples == triples
        assert len(rows) == want
