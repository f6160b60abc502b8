"""A large batch computes in slices: between them the event loop runs whatever else waits in the
scheduler's process (other workflows' actors, the consumers, the outbox relay)."""

from __future__ import annotations

import asyncio

from legato.scheduler.mailbox import give_way


async def test_a_long_batch_lets_other_tasks_run_between_its_slices() -> None:
    """Another task, ready all along, runs after every slice of 16 items, not only once the batch is
    done; the batch still sees every item once, in order."""
    seen: list[int] = []
    progress_when_other_ran: list[int] = []

    async def other() -> None:
        while True:
            progress_when_other_ran.append(len(seen))
            await asyncio.sleep(0)

    task = asyncio.create_task(other())
    await asyncio.sleep(0)  # the other task is running and ready again
    progress_when_other_ran.clear()
    for done, item in enumerate(range(64)):  # as the actor walks its batch
        await give_way(done, 16)
        seen.append(item)  # computing: no await of its own
    task.cancel()
    assert seen == list(range(64))
    # Ran after the first, second and third slice, while the batch was under way.
    assert [n for n in progress_when_other_ran if n < 64] == [16, 32, 48]


async def test_a_batch_of_one_slice_never_gives_way() -> None:
    """A batch no longer than a slice (the common small one) costs no turn of the event loop."""
    ran = 0

    async def other() -> None:
        nonlocal ran
        ran += 1

    task = asyncio.create_task(other())
    got = []
    for done, item in enumerate(range(16)):
        await give_way(done, 16)
        got.append(item)
    assert got == list(range(16))
    assert ran == 0  # it had not been given a turn while the batch computed
    await task
    assert ran == 1
