"""``paced`` (``bench/_servers.py``): the benches' open-loop arrival rate. Send i goes out once, in
order, never before i/rate, and a send that has not returned holds no later one back."""

from __future__ import annotations

import asyncio
import time

from tests.support.bench import load_bench_module

paced = load_bench_module("_servers.py").paced


async def test_each_send_goes_out_once_in_order_and_never_before_its_time() -> None:
    rate, count = 500.0, 60
    at: list[tuple[int, float]] = []
    t0 = time.monotonic()

    async def send(i: int) -> None:
        at.append((i, time.monotonic() - t0))

    await paced(rate, count, send)
    assert [i for i, _ in at] == list(range(count))
    early = [(i, round(t * 1000, 2)) for i, t in at if t < i / rate - 0.002]
    assert not early, f"sent before their time (i, ms): {early}"


async def test_a_send_that_has_not_returned_holds_no_later_one_back() -> None:
    """Open loop: send 0 waits for send 5, which only goes out if paced does not wait for send 0."""
    fifth = asyncio.Event()
    returned: list[int] = []

    async def send(i: int) -> None:
        if i == 0:
            await fifth.wait()
        if i == 5:
            fifth.set()
        returned.append(i)

    await asyncio.wait_for(paced(1000.0, 8, send), timeout=10.0)
    assert sorted(returned) == list(range(8))
    assert returned.index(5) < returned.index(0)


async def test_sends_are_not_made_up_front() -> None:
    """Each send's task is made when its time comes: thousands made at once delayed the first sends and
    then let them out together, at several times the rate."""
    base = len(asyncio.all_tasks())
    seen: list[int] = []

    async def send(i: int) -> None:
        if i == 0:
            seen.append(len(asyncio.all_tasks()) - base)

    await paced(2000.0, 2000, send)
    assert seen and seen[0] <= 2, f"{seen[0]} tasks existed when the first send went out"
