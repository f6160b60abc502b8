"""``legato.client`` against a real stack: a typed reply from every endpoint, a typed exception per error
code with the server's message, bad input refused before it is sent, a start retried after its reply was
lost making exactly one run, and the synchronous wrapper."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from msgspec import UNSET

from legato.client import (
    Conflict,
    InvalidRequest,
    LegatoClient,
    LegatoError,
    NotApplicable,
    NotFound,
    PermissionDenied,
    Timeout,
)
from legato.client.sync import connect as connect_sync
from legato.config.settings import Settings
from legato.core.reasons import Paused, WaitingForSignals
from legato.core.statuses import InstanceStatus
from legato.protocol import replies
from legato.security.keyring import Keyring
from tests.support.stack import running_stack

pytestmark = pytest.mark.timeout(300)

EVERYTHING = """
id: everything
run_strategy: {type: parallel, max_concurrency: 4}
params:
  day: {type: string, default: "2026-01-01"}
steps:
  - id: each
    type: foreach
    foreach:
      over: "range(3)"
      as: k
      concurrency: 2
      steps:
        - id: work
          type: noop
  - id: gate
    type: noop
    depends_on: [each]
    wait_for_signals:
      - name: client_test_go
        match:
          day: "${params.day}"
"""

QUICK = """
id: quick
run_strategy: {type: parallel, max_concurrency: 4}
params:
  day: {type: string, default: ""}
steps:
  - id: only
    type: noop
"""


async def until(check, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    """Poll ``check`` (async, returns a value or None) until it returns a value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value is not None:
            return value
        await asyncio.sleep(0.2)
    raise TimeoutError("condition not met")


async def test_every_endpoint_answers_its_typed_reply(settings: Settings, tmp_path: Path) -> None:
    async with running_stack(settings, tmp_path) as (_, client):
        pushed = await client.push(EVERYTHING, source="everything.yaml")
        assert isinstance(pushed, replies.WorkflowPushed) and pushed.created
        assert isinstance(await client.validate(EVERYTHING), replies.WorkflowValidated)
        await client.push(QUICK)

        detail = await client.get_workflow("everything")
        assert isinstance(detail, replies.WorkflowDetail) and detail.versions[0].version == 1
        page = await client.list_workflows()
        assert [w.workflow_id for w in page.workflows] == ["everything", "quick"]
        assert [w.workflow_id async for w in client.iter_workflows(page_size=1)] == ["everything", "quick"]

        # A paused workflow's queued run: the "why not running" is a typed Reason inside the reply.
        paused = await client.pause_workflow("everything", reason="client test")
        assert isinstance(paused, replies.WorkflowPaused) and paused.changed and paused.pause is not None
        started = await client.start("everything", {"day": "d1"})
        assert isinstance(started, replies.StartReply) and started.status is InstanceStatus.PENDING

        async def queued() -> replies.InstanceDetail | None:
            run = await client.get_run(started.instance_id)
            return run if run.status == InstanceStatus.QUEUED else None

        run = await until(queued)
        assert isinstance(run.reason, Paused) and run.reason.paused_by == "test"
        status = await client.workflow_status("everything")
        assert isinstance(status, replies.WorkflowStatus) and status.state == "paused"
        assert isinstance(status.queued_runs[0].reason, Paused) and status.queued_runs[0].position == 1
        listed = await client.list_runs(workflow_id="everything")
        assert isinstance(listed.instances[0].reason, Paused)
        resumed = await client.resume_workflow("everything")
        assert resumed.changed and resumed.pause is None

        # A foreach's progress and a step waiting for a signal: typed inside the step views.
        async def gate_waits() -> replies.InstanceDetail | None:
            run = await client.get_run(started.instance_id)
            steps = {s.step_id: s for s in run.steps}
            return run if steps["gate"].status == "waiting" else None

        run = await until(gate_waits)
        steps = {s.step_id: s for s in run.steps}
        assert isinstance(steps["each"].progress, replies.ForeachProgressView)
        assert steps["each"].progress.total == 3 and steps["each"].progress.succeeded == 3
        assert isinstance(steps["gate"].reason, WaitingForSignals)
        assert steps["gate"].progress is None
        assert isinstance(run.timeline[0], replies.TimelineEntry)
        iterations = await client.iterations(started.instance_id, "each")
        assert [i.iteration for i in iterations.iterations] == [0, 1, 2]
        assert all(isinstance(i, replies.Iteration) for i in iterations.iterations)
        assert [r.instance_id async for r in client.iter_runs(workflow_id="everything")] == [
            started.instance_id
        ]

        pending = await client.pending_signals(workflow_id="everything")
        assert isinstance(pending, replies.PendingSignalList) and pending.steps[0].signal == "client_test_go"
        schema = await client.set_signal_schema("client_test_go", {"required": ["day"], "fields": {}})
        assert isinstance(schema, replies.SignalSchemaSet) and schema.schema is not None
        sent = await client.send_signal("client_test_go", {"day": "d1"})
        assert isinstance(sent, replies.SignalSent) and sent.id  # the client made the id

        async def stored() -> replies.SignalPage | None:  # the router stores signals asynchronously
            page = await client.list_signals(name="client_test_go")
            return page if page.signals else None

        signals = await until(stored)
        assert isinstance(signals.signals[0], replies.SignalInfo) and signals.signals[0].id == sent.id

        async def ended() -> replies.InstanceDetail | None:
            run = await client.get_run(started.instance_id)
            return run if run.status == InstanceStatus.SUCCEEDED else None

        await until(ended)
        lineage = await client.lineage(instance_id=started.instance_id)
        assert isinstance(lineage.run, replies.LineageRun)
        unblocked_by = lineage.run.unblocked_by
        assert unblocked_by is not UNSET and unblocked_by[0].id == sent.id
        by_signal = await client.lineage(name="client_test_go", signal_id=sent.id)
        assert isinstance(by_signal.signal, replies.LineageSignal)

        tag = await client.set_tag("client-test", 2)
        assert isinstance(tag, replies.TagInfo) and tag.limit == 2
        assert [t.tag for t in (await client.list_tags()).tags] == ["client-test"]

        dead = await client.list_dead_letters()
        assert isinstance(dead, replies.DeadLetterPage) and dead.dead_letters == []

        plan = await client.start_backfill("quick", "2026-01-01", "2026-01-03", dry_run=True)
        assert isinstance(plan, replies.BackfillStarted) and plan.would_create == 3 and plan.plan is not UNSET
        backfill = await client.start_backfill("quick", "2026-01-01", "2026-01-02", concurrency=1)
        assert isinstance(backfill.backfill_id, str)
        shown = await client.show_backfill(backfill.backfill_id)
        assert isinstance(shown, replies.BackfillInfo) and shown.from_ is not None
        assert [b.backfill_id for b in (await client.list_backfills()).backfills] == [backfill.backfill_id]
        cancelled = await client.cancel_backfill(backfill.backfill_id, reason="client test")
        assert cancelled.status == "cancelled" and cancelled.stopped_runs is not UNSET
        with pytest.raises(NotApplicable, match="cancelled"):
            await client.backfill_action("retry_failed", backfill.backfill_id)

        run2 = await client.start("everything", {"day": "d2"})
        await until(lambda: _status_in(client, run2.instance_id, ("running",)))
        action = await client.stop(run2.instance_id, reason="client test")
        assert isinstance(action, replies.ActionAccepted) and action.action == "stop"
        await until(lambda: _status_in(client, run2.instance_id, ("stopped",)))
        restarted = await client.restart(run2.instance_id, reason="again")
        assert restarted.action == "restart"
        everything = await client.workflow_action("stop", "everything", reason="done")
        assert everything.action == "stop_all" and everything.instance_id is None

        summary = await client.set_run_strategy("quick", "sequential", reason="one at a time")
        assert isinstance(summary, replies.StrategySet) and summary.run_strategy == "sequential"
        assert summary.strategy_change is not None and summary.strategy_change.reason == "one at a time"
        assert (await client.workflow_status("quick")).strategy_change == summary.strategy_change
        assert (await client.deactivate("quick")).active is False
        assert (await client.activate("quick")).active is True
        archived = await client.archive_workflow("quick", reason="client test", force=True)
        assert isinstance(archived, replies.WorkflowArchived) and archived.archived_at is not None
        deleted = await client.delete_workflow("quick", reason="client test", force=True)
        assert isinstance(deleted, replies.WorkflowDeleted) and deleted.deleted


async def _status_in(client: LegatoClient, instance_id: str, statuses: tuple[str, ...]) -> str | None:
    run = await client.get_run(instance_id, timeline_limit=0)
    return run.status if run.status in statuses else None


async def test_each_error_code_raises_its_exception_with_the_servers_message(
    settings: Settings, keyring: Keyring | None, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path) as (_, client):
        await client.push(QUICK)
        with pytest.raises(NotFound) as missing:
            await client.start("no-such-workflow")
        assert missing.value.code == "not_found" and "no-such-workflow" in missing.value.message
        with pytest.raises(NotFound, match="unknown run"):
            await client.get_run("nope")

        await client.start("quick", {"day": "a"}, request_id="same-key")
        with pytest.raises(Conflict) as conflict:
            await client.start("quick", {"day": "b"}, request_id="same-key")
        assert "already used for a different start" in conflict.value.message
        assert conflict.value.details["request_id"] == "same-key"
        assert isinstance(conflict.value, LegatoError)

        await client.push(QUICK.replace("id: quick", "id: strict").replace('default: ""', "required: true"))
        with pytest.raises(InvalidRequest) as bad_params:
            await client.start("strict")  # the server checks the params against the definition
        assert bad_params.value.code == "invalid_params" and "day" in bad_params.value.message

        # Wrong types fail before anything is sent, naming the field.
        sent = client.sent
        with pytest.raises(
            InvalidRequest, match=r"instance.start: workflow_id: Expected `str`, got `int`"
        ) as bad:
            await client.start(42)  # type: ignore[arg-type]
        assert bad.value.details["field"] == "workflow_id"
        with pytest.raises(InvalidRequest, match="params"):
            await client.start("quick", ["not", "a", "dict"])  # type: ignore[arg-type]
        with pytest.raises(InvalidRequest, match="limit"):
            await client.list_runs(limit="10")  # type: ignore[arg-type]
        with pytest.raises(InvalidRequest, match="verb"):
            await client.instance_action("explode", "x", reason="r")
        assert client.sent == sent

        if keyring is not None:
            viewer = await LegatoClient.connect(
                settings.nats_url, namespace=settings.namespace, creds=str(keyring.seed_file("viewer"))
            )
            try:
                assert (await viewer.list_workflows()).workflows[0].workflow_id == "quick"
                with pytest.raises(PermissionDenied) as denied:
                    await viewer.start("quick")
                assert denied.value.code == "permission_denied"
                assert "instance.start" in denied.value.message
            finally:
                await viewer.close()


async def test_a_start_whose_reply_is_lost_is_retried_with_one_request_id_and_makes_one_run(
    settings: Settings, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path) as (stack, client):
        await client.push(QUICK)
        trigger = stack["trigger"].pid
        assert trigger is not None
        patient = await LegatoClient.connect(
            settings.nats_url, namespace=settings.namespace, settings=settings, timeout=1.0, retries=6
        )
        try:
            os.kill(trigger, signal.SIGSTOP)  # the request arrives; no reply within the timeout
            try:
                start = asyncio.ensure_future(patient.start("quick", {"day": "lost"}))
                await asyncio.sleep(2.5)
                assert not start.done()
                assert patient.sent >= 2  # sent again after the first timeout
            finally:
                os.kill(trigger, signal.SIGCONT)
            reply = await start
        finally:
            await patient.close()
        assert reply.workflow_id == "quick"

        async def settled() -> list[replies.InstanceSummary] | None:
            runs = (await client.list_runs(workflow_id="quick")).instances
            return runs if runs and all(r.status == "succeeded" for r in runs) else None

        runs = await until(settled)
        assert [r.instance_id for r in runs] == [reply.instance_id]

        # A client that gives up says so with Timeout (the server did not answer in time).
        short = await LegatoClient.connect(
            settings.nats_url, namespace=settings.namespace, settings=settings, timeout=0.5, retries=1
        )
        try:
            os.kill(trigger, signal.SIGSTOP)
            try:
                with pytest.raises(Timeout, match="no reply within"):
                    await short.list_workflows()
            finally:
                os.kill(trigger, signal.SIGCONT)
        finally:
            await short.close()


async def test_the_sync_wrapper_works_inside_a_running_event_loop(settings: Settings, tmp_path: Path) -> None:
    async with running_stack(settings, tmp_path) as (_, client):
        await client.push(QUICK)
        # This test runs on an event loop, as a notebook cell does: the wrapper brings its own.
        with connect_sync(settings.nats_url, namespace=settings.namespace, settings=settings) as legato:
            started = legato.start("quick", {"day": "sync"})
            assert isinstance(started, replies.StartReply)
            run = legato.get_run(started.instance_id)
            assert isinstance(run, replies.InstanceDetail) and run.workflow_id == "quick"
            assert [w.workflow_id for w in legato.iter_workflows()] == ["quick"]
            with pytest.raises(NotFound):
                legato.get_run("nope")
