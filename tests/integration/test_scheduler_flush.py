"""A scheduler batch's writes against a real PostgreSQL: the common rows go in one statement that also
runs the transaction's final lease check, so a batch costs few round trips; a lost lease at that check
leaves nothing written; the statements that must follow the bulk writes still see them."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from legato.bus.publisher import OutgoingMessage
from legato.core.reasons import OtherReason, decode_reason
from legato.scheduler import repository, writes
from legato.scheduler.leases import LeaseGuard, LeaseLost
from legato.scheduler.state import (
    AttemptState,
    InstanceState,
    NewTimer,
    OrphanSettled,
    StepState,
    TimelineEntry,
    UnitOfWork,
    WorkflowRow,
)
from legato.store import create_pool

PARTITION = 3
INCARNATION = "inc-1"
TOKEN = 7


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, max_size=2)
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO workflow (id, active_version, latest_version, run_strategy, max_concurrency) "
            "VALUES ('wf', 1, 1, 'parallel', 10)"
        )
        await conn.execute(
            "INSERT INTO partition_lease (partition, owner, incarnation, token, expires_at) "
            "VALUES ($1, 'replica-0', $2, $3, now() + interval '1 hour')",
            PARTITION,
            INCARNATION,
            TOKEN,
        )
    try:
        yield pool
    finally:
        await pool.close()


class Rollback(Exception):
    pass


async def warm(conn: asyncpg.Connection, uow: UnitOfWork) -> list[str]:
    """Run the batch's statements once and roll them back (the connection learns the types it writes,
    in queries of its own), then log every statement it runs from now on."""
    with pytest.raises(Rollback):
        async with conn.transaction():
            await writes.flush(conn, uow, workflow_row(), guard=guard())
            raise Rollback
    statements: list[str] = []
    conn.add_query_logger(lambda q: statements.append(q.query))
    return statements


def guard(token: int = TOKEN) -> LeaseGuard:
    return LeaseGuard(PARTITION, True, (PARTITION, INCARNATION, token, "5000"))


def workflow_row() -> WorkflowRow:
    return WorkflowRow(
        id="wf",
        active=True,
        active_version=1,
        run_strategy="parallel",
        max_concurrency=10,
        paused=False,
        blocked_by=None,
        blocked_since=None,
        running_count=1,
        queued_count=0,
    )


def batch() -> UnitOfWork:
    """What a run's start records: the run, its step, the step's attempt, timeline entries, a timeout
    timer, the work item in the outbox, two lifecycle events in the event outbox, and the workflow's
    counters."""
    now = datetime.now(UTC)
    uow = UnitOfWork()
    run = InstanceState(
        id="r1",
        workflow_id="wf",
        version=1,
        trigger_key="k1",
        trigger={"kind": "api"},
        status="running",
        params={"n": 1},
        run_params={"n": 1},
        created_at=now,
        trace_links=["00-" + "1" * 32 + "-" + "2" * 16 + "-01"],
    )
    run.new = True
    uow.touch_instance(run)
    uow.touch_step(
        StepState(instance_id="r1", step_id="a", status="running", attempts=1, current_attempt_id="r1.a.1")
    )
    uow.touch_attempt(
        AttemptState(
            id="r1.a.1",
            instance_id="r1",
            step_id="a",
            attempt=1,
            status="dispatched",
            queue="q",
            dispatched_at=now,
        )
    )
    uow.note(TimelineEntry(instance_id="r1", event="run_started", details={"by": "api"}))
    uow.note(TimelineEntry(instance_id="r1", step_id="a", event="attempt_dispatched"))
    uow.timers.append(
        NewTimer(PARTITION, "wf", "r1", "step_timeout", now + timedelta(minutes=5), "a", "r1.a.1", {"x": 1})
    )
    uow.outbox.append(OutgoingMessage("legato.work.q", b"item", msg_id="work:r1.a.1"))
    uow.events.append(OutgoingMessage("legato.notify.run.wf.running", b"event1", msg_id="run:r1:1"))
    uow.events.append(OutgoingMessage("legato.notify.step.wf.queued", b"event2", msg_id="step:r1:a:1"))
    uow.workflow_dirty = True
    return uow


async def test_a_batch_is_written_in_one_statement_with_its_final_lease_check(pool: asyncpg.Pool) -> None:
    uow = batch()
    async with pool.acquire() as conn:
        statements = await warm(conn, batch())
        async with conn.transaction():
            await writes.flush(conn, uow, workflow_row(), guard=guard())
    # BEGIN and COMMIT aside, one statement wrote every row and checked the lease.
    assert [s for s in statements if s not in ("BEGIN;", "COMMIT;")] == [statements[1]], statements
    assert "FOR KEY SHARE" in statements[1]
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT trace_links FROM workflow_instance WHERE id = 'r1'") == [
            "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
        ]
        assert await conn.fetchval("SELECT status FROM step_run WHERE instance_id = 'r1'") == "running"
        assert await conn.fetchval("SELECT status FROM step_attempt WHERE id = 'r1.a.1'") == "dispatched"
        timeline = await conn.fetch(
            "SELECT event, details FROM timeline WHERE instance_id = 'r1' ORDER BY id"
        )
        assert [(r["event"], r["details"]) for r in timeline] == [
            ("run_started", {"by": "api"}),
            ("attempt_dispatched", None),
        ]
        assert await conn.fetchval("SELECT payload FROM timer WHERE instance_id = 'r1'") == {"x": 1}
        assert await conn.fetchval("SELECT running_count FROM workflow WHERE id = 'wf'") == 1
        outbox = await conn.fetch("SELECT id, msg_id FROM outbox ORDER BY id")
        events = await conn.fetch("SELECT subjects, payloads, msg_ids FROM event_outbox")
    # The rows handed to the relay carry the ids the table gave, in the order of the messages.
    assert [(i, m.msg_id) for i, m in uow.outbox_rows] == [(r["id"], r["msg_id"]) for r in outbox]
    assert [m.msg_id for _, m in uow.outbox_rows] == ["work:r1.a.1"]
    # The events are one row, in order; the relay is woken for them once the batch commits.
    assert [tuple(r.values()) for r in events] == [
        (
            ["legato.notify.run.wf.running", "legato.notify.step.wf.queued"],
            [b"event1", b"event2"],
            ["run:r1:1", "step:r1:a:1"],
        )
    ]
    assert uow.flushed_events == 2 and not uow.events


async def test_a_lease_lost_by_the_final_check_leaves_nothing_written(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(LeaseLost):
            async with conn.transaction():
                await writes.flush(conn, batch(), workflow_row(), guard=guard(token=TOKEN + 1))
        tables = (
            "workflow_instance",
            "step_run",
            "step_attempt",
            "timeline",
            "timer",
            "outbox",
            "event_outbox",
        )
        for table in tables:
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
        assert await conn.fetchval("SELECT running_count FROM workflow WHERE id = 'wf'") == 0
        # An expired lease is lost too, even with the right token.
        await conn.execute("UPDATE partition_lease SET expires_at = now() - interval '1 second'")
        with pytest.raises(LeaseLost):
            async with conn.transaction():
                await writes.flush(conn, batch(), workflow_row(), guard=guard())
        assert await conn.fetchval("SELECT count(*) FROM workflow_instance") == 0


async def test_the_final_lease_check_holds_the_lease_row_until_the_commit(pool: asyncpg.Pool) -> None:
    """A taker's FOR UPDATE SKIP LOCKED passes the lease row by while the batch is uncommitted."""
    async with pool.acquire() as conn, pool.acquire() as taker:
        async with conn.transaction():
            await writes.flush(conn, batch(), workflow_row(), guard=guard())
            async with taker.transaction():
                taken = await taker.fetch(
                    "SELECT partition FROM partition_lease WHERE partition = $1 FOR UPDATE SKIP LOCKED",
                    PARTITION,
                )
            assert taken == []
        async with taker.transaction():
            taken = await taker.fetch(
                "SELECT partition FROM partition_lease WHERE partition = $1 FOR UPDATE SKIP LOCKED", PARTITION
            )
        assert [r["partition"] for r in taken] == [PARTITION]


async def test_statements_that_update_the_written_rows_follow_them_and_the_check_comes_last(
    pool: asyncpg.Pool,
) -> None:
    """An attempt marked lost in the batch that also upserts it: the UPDATE runs after the upsert (it sees
    the row), and the final lease check runs after that UPDATE, as the last statement."""
    uow = batch()
    uow.orphans_settled.append(OrphanSettled("r1.a.1", "its run ended"))
    async with pool.acquire() as conn:
        statements = await warm(conn, batch())
        async with conn.transaction():
            await writes.flush(conn, uow, workflow_row(), guard=guard())
        work = [s for s in statements if s not in ("BEGIN;", "COMMIT;")]
        assert "FOR KEY SHARE" not in work[0]
        assert work[1].startswith("UPDATE step_attempt SET status = 'lost'")
        assert "FOR KEY SHARE" in work[-1] and len(work) == 3, work
        row = await conn.fetchrow("SELECT status, error FROM step_attempt WHERE id = 'r1.a.1'")
    assert (row["status"], row["error"]) == ("lost", "its run ended")


async def test_lock_workflow_checks_the_lease_and_probes_the_starts_in_the_same_statement(
    pool: asyncpg.Pool,
) -> None:
    start = LeaseGuard(PARTITION, False, (PARTITION, INCARNATION, TOKEN, "20000"))
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO workflow_instance (id, workflow_id, version, trigger_key, trigger, status) "
            "VALUES ('ran', 'wf', 1, 'k1', '{}', 'succeeded'), ('runs', 'wf', 1, 'k2', '{}', 'running')"
        )
        statements: list[str] = []
        conn.add_query_logger(lambda q: statements.append(q.query))
        async with conn.transaction():
            config, existing = await repository.lock_workflow(
                conn, "wf", start, ["new", "ran", "runs", "ran"]
            )
            assert config is not None and config.run_strategy == "parallel"
            assert existing == {"ran", "runs"}
            assert await conn.fetchval("SHOW idle_in_transaction_session_timeout") == "20s"
        assert len([q for q in statements if q not in ("BEGIN;", "COMMIT;")]) == 2  # the lock, the SHOW
        async with conn.transaction():
            assert await repository.lock_workflow(conn, "wf", start, []) == (config, set())
        async with conn.transaction():
            assert await repository.lock_workflow(conn, "gone", start, ["ran"]) == (None, {"ran"})  # deleted
        lost = LeaseGuard(PARTITION, False, (PARTITION, INCARNATION, TOKEN + 1, "20000"))
        for workflow_id, ids in (("wf", []), ("wf", ["ran"]), ("gone", [])):  # a lost lease wins over all
            with pytest.raises(LeaseLost):
                async with conn.transaction():
                    await repository.lock_workflow(conn, workflow_id, lost, ids)


async def test_timer_cancellations_go_in_the_same_statement_and_spare_the_timers_it_adds(
    pool: asyncpg.Pool,
) -> None:
    """A run's step timeout cancelled and its step's new timeout added in one flush: the old timer goes,
    the new one stays; a cancellation by kind or by step leaves the other timers of the run alone."""
    soon = datetime.now(UTC) + timedelta(minutes=5)
    first = UnitOfWork()
    for run, step, kind in [
        ("r1", "a", "step_timeout"),
        ("r1", "b", "step_timeout"),
        ("r1", None, "run_timeout"),
    ]:
        first.timers.append(NewTimer(PARTITION, "wf", run, kind, soon, step))
    first.timers.append(NewTimer(PARTITION, "wf", "r2", "step_timeout", soon, "a"))
    async with pool.acquire() as conn:
        async with conn.transaction():
            await writes.flush(conn, first, workflow_row())
        second = UnitOfWork()
        second.cancel_timer("r1", "step_timeout", "a")  # the attempt of step a ended
        second.timers.append(
            NewTimer(PARTITION, "wf", "r1", "step_timeout", soon, "a", "r1.a.2")
        )  # its retry
        second.cancel_timer("r2")  # run r2 ended: all of its timers
        statements = await warm(conn, UnitOfWork())
        async with conn.transaction():
            await writes.flush(conn, second, workflow_row(), guard=guard())
        assert len([s for s in statements if s not in ("BEGIN;", "COMMIT;")]) == 1, statements
        left = await conn.fetch("SELECT instance_id, step_id, kind, attempt_id FROM timer ORDER BY id")
    assert [tuple(r) for r in left] == [
        ("r1", "b", "step_timeout", None),
        ("r1", None, "run_timeout", None),
        ("r1", "a", "step_timeout", "r1.a.2"),
    ]


async def test_every_value_a_batch_writes_reads_back_as_it_was(pool: asyncpg.Pool) -> None:
    """Each table's rows travel as one JSON array: text with quotes, backslashes, newlines and non-ASCII,
    zero and false, NULLs, nested and list jsonb, a reason written by another version (stored back as it
    was) and timestamps to the microsecond all read back unchanged."""
    now = datetime(2026, 12, 5, 9, 30, 1, 123456, tzinfo=UTC)
    odd = 'quote " back \\ slash\nnew line, é, 日本, emoji 🎻, {not: json}'
    run = InstanceState(
        id="r-odd",
        workflow_id="wf",
        version=1,
        trigger_key="k-odd",
        trigger={"kind": "api", "by": odd, "list": [1, 2.5, None, True, {"x": []}]},
        status="running",
        params={"s": odd, "n": 0, "f": False},
        run_params={},
        created_at=now,
        started_at=now + timedelta(microseconds=1),
        error=odd,
        run_number=0,
        unblocked=False,
        parent_iteration=0,
        reason=decode_reason({"code": "from_a_later_version", "message": odd, "extra": {"k": [1]}}),
        trace_links=["00-" + "3" * 32 + "-" + "4" * 16 + "-01"],
    )
    run.new = True
    uow = UnitOfWork()
    uow.touch_instance(run)
    uow.touch_step(
        StepState(instance_id="r-odd", step_id=odd, status="running", outputs={"o": odd}, attempts=0)
    )
    uow.note(TimelineEntry(instance_id="r-odd", event="run_started", message=odd, details={"d": odd}))
    async with pool.acquire() as conn, conn.transaction():
        await writes.flush(conn, uow, workflow_row())
    async with pool.acquire() as conn:
        state = await repository.load_workflow_state(conn, "wf")
        timeline = await conn.fetchrow(
            "SELECT message, details::text FROM timeline WHERE instance_id = 'r-odd'"
        )
    assert state is not None
    back = state.instances["r-odd"]
    for field in ("trigger", "params", "run_params", "error", "run_number", "unblocked", "parent_iteration"):
        assert getattr(back, field) == getattr(run, field), field
    assert (back.created_at, back.started_at, back.ended_at) == (run.created_at, run.started_at, None)
    assert back.trace_links == run.trace_links
    assert isinstance(back.reason, OtherReason) and isinstance(run.reason, OtherReason)
    assert back.reason.raw == run.reason.raw
    assert back.steps[odd].outputs == {"o": odd}
    assert timeline["message"] == odd
    assert json.loads(timeline["details"]) == {"d": odd}


# ------------------------------------------------------------------ a batch without a transaction block

CONFIG = repository.WorkflowConfig(
    active=True, active_version=1, run_strategy="parallel", max_concurrency=10, paused=False
)


def unlocked(config: repository.WorkflowConfig = CONFIG) -> writes.Unlocked:
    """A batch computed without the lock with ``config``, which started run r1 as a new one."""
    return writes.Unlocked(contextlib.AsyncExitStack(), config, ["r1"])


async def test_an_unlocked_batch_is_one_statement_that_commits_and_checks_itself(pool: asyncpg.Pool) -> None:
    """No BEGIN, no lock statement, no COMMIT: the flush's one statement writes the rows, locks the
    workflow row, checks its configuration, the started runs and the lease, and commits as it ends."""
    for dirty in (True, False):  # the check rides in the counters' update, or in a locking read of its own
        async with pool.acquire() as conn:
            await conn.execute(
                "TRUNCATE workflow_instance, step_run, step_attempt, timeline, timer, outbox, event_outbox CASCADE"
            )
            statements = await warm(conn, batch())
            uow = batch()
            uow.workflow_dirty = dirty
            await writes.flush(conn, uow, workflow_row(), guard=guard(), unlocked=unlocked())
            await asyncio.sleep(0)  # the query logger is called soon after
            assert statements == [statements[0]] and "legato_batch_check" in statements[0], statements
            # The row is locked by the counters' update, or by a locking read when there is none.
            assert ("UPDATE workflow" in statements[0]) is dirty
            assert ("FOR UPDATE" in statements[0]) is not dirty and "FOR KEY SHARE" in statements[0]
        async with pool.acquire() as other:  # committed: another session sees it
            assert await other.fetchval("SELECT status FROM workflow_instance WHERE id = 'r1'") == "running"
            assert await other.fetchval("SELECT count(*) FROM step_attempt") == 1
        assert [m.msg_id for _, m in uow.outbox_rows] == ["work:r1.a.1"]


async def _nothing_written(conn: asyncpg.Connection) -> None:
    for table in ("step_run", "step_attempt", "timeline", "timer", "outbox", "event_outbox"):
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
    assert await conn.fetchval("SELECT running_count FROM workflow WHERE id = 'wf'") == 0


@pytest.mark.parametrize("dirty", [True, False])
async def test_an_unlocked_batch_writes_nothing_if_the_workflow_changed_a_run_existed_or_the_lease_went(
    pool: asyncpg.Pool, dirty: bool
) -> None:
    async with pool.acquire() as conn:

        async def flush(config: repository.WorkflowConfig = CONFIG, token: int = TOKEN) -> None:
            uow = batch()
            uow.workflow_dirty = dirty
            await writes.flush(conn, uow, workflow_row(), guard=guard(token), unlocked=unlocked(config))

        # Configured otherwise than the batch was computed with (paused, another strategy or version).
        for changed in (
            {"paused": True},
            {"run_strategy": "sequential"},
            {"active_version": 2},
            {"max_concurrency": 3},
        ):
            with pytest.raises(writes.WorkflowChangedUnderBatch):
                await flush(config=dataclasses.replace(CONFIG, **changed))
            assert await conn.fetchval("SELECT count(*) FROM workflow_instance") == 0
            await _nothing_written(conn)
        # The run it took for new exists (a start replayed after its run ended and left memory): the
        # existing run is left as it was, not overwritten.
        await conn.execute(
            "INSERT INTO workflow_instance (id, workflow_id, version, trigger_key, trigger, status) "
            "VALUES ('r1', 'wf', 1, 'k1', '{}', 'succeeded')"
        )
        with pytest.raises(writes.WorkflowChangedUnderBatch):
            await flush()
        assert await conn.fetchval("SELECT status FROM workflow_instance WHERE id = 'r1'") == "succeeded"
        await _nothing_written(conn)
        await conn.execute("DELETE FROM workflow_instance")
        # The lease is lost.
        with pytest.raises(LeaseLost):
            await flush(token=TOKEN + 1)
        assert await conn.fetchval("SELECT count(*) FROM workflow_instance") == 0
        await _nothing_written(conn)
        # The workflow was deleted.
        await conn.execute("DELETE FROM workflow WHERE id = 'wf'")
        with pytest.raises(writes.WorkflowChangedUnderBatch):
            await flush()
        assert await conn.fetchval("SELECT count(*) FROM workflow_instance") == 0


async def test_an_unlocked_batch_waits_for_a_change_of_the_workflow_in_progress_and_sees_it(
    pool: asyncpg.Pool,
) -> None:
    """The API pausing the workflow holds the row while its transaction is open: the batch's statement
    waits for it, then finds the row paused, and writes nothing. So no batch computed before a pause
    commits after it."""
    async with pool.acquire() as conn, pool.acquire() as api:
        await warm(conn, batch())
        async with api.transaction():
            await api.execute("UPDATE workflow SET paused = true WHERE id = 'wf'")
            flushing = asyncio.create_task(
                writes.flush(conn, batch(), workflow_row(), guard=guard(), unlocked=unlocked())
            )
            await asyncio.sleep(0.3)
            assert not flushing.done()  # waiting for the row
        with pytest.raises(writes.WorkflowChangedUnderBatch):
            await flushing
        assert await conn.fetchval("SELECT count(*) FROM workflow_instance") == 0
