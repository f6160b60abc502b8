"""Archiving and deleting workflows through the API and the CLI: refused while runs are active unless
forced, recorded in the audit trail; a deleted id can be pushed again and runs afresh."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from legato.client import ApiError
from legato.config.settings import Settings
from tests.support.auth import creds_for
from tests.support.stack import running_stack, wait_for

SLOW = """
id: doomed
run_strategy: {type: parallel, max_concurrency: 5}
steps:
  - id: nap
    type: shell
    command: 'sleep 60'
"""

QUICK = """
id: doomed
description: the second life
run_strategy: {type: parallel, max_concurrency: 5}
steps:
  - id: only
    type: noop
"""


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "LEGATO_NATS_URL": settings.nats_url,
        "LEGATO_NAMESPACE": settings.namespace,
        # The audited actor is the identity that signs the CLI's requests.
        "LEGATO_NATS_CREDS": creds_for("operator-ada") or "",
    }
    return subprocess.run(
        [sys.executable, "-m", "legato.cli.main", *args], env=env, capture_output=True, text=True, timeout=60
    )


async def test_archive_and_delete_refuse_active_runs_unless_forced_and_are_audited(
    settings: Settings, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path) as (_stack, client):
        await client.push(SLOW)
        run = await client.start("doomed")
        await wait_for(client, run.instance_id, statuses=("running",))

        for action in ("archive", "delete"):
            out = cli(settings, "workflow", action, "doomed", "--reason", "cleanup")
            assert out.returncode == 1, out
            assert "1 run(s) are queued or running" in out.stderr and "--force" in out.stderr
        assert (await client.call("workflow.get", {"workflow_id": "doomed"}))["active"] is True
        # set-strategy --reason: who and why are on the workflow (and in the audit trail below).
        out = cli(
            settings,
            "workflow",
            "set-strategy",
            "doomed",
            "parallel",
            "--max-concurrency",
            "2",
            "--reason",
            "drain",
        )
        assert (
            out.returncode == 0
            and "run strategy parallel (max_concurrency 2) set by operator-ada" in out.stdout
        ), out
        change = (await client.call("workflow.status", {"workflow_id": "doomed"}))["strategy_change"]
        assert (change["by"], change["reason"]) == ("operator-ada", "drain")

        out = cli(settings, "workflow", "archive", "doomed", "--reason", "retired", "--force")
        assert out.returncode == 0 and "archived" in out.stdout, out
        listed = await client.call("workflow.list", {})
        assert "doomed" not in [w["workflow_id"] for w in listed["workflows"]]
        out = cli(settings, "workflow", "list", "--archived")
        assert out.returncode == 0 and "doomed" in out.stdout and "archived" in out.stdout
        with pytest.raises(ApiError) as err:
            await client.start("doomed")
        assert err.value.code == "inactive"
        assert (await client.get(run.instance_id))["status"] == "running"  # archive keeps runs

        out = cli(settings, "workflow", "delete", "doomed", "--reason", "gone for good", "--force")
        assert out.returncode == 0 and "deleted with 1 run(s), 1 of them active" in out.stdout, out
        for call, body in (
            ("workflow.get", {"workflow_id": "doomed"}),
            ("instance.get", {"instance_id": run.instance_id}),
        ):
            with pytest.raises(ApiError) as err:
                await client.call(call, body)
            assert err.value.code == "not_found"
        conn = await asyncpg.connect(settings.database_url)
        try:
            audit = await conn.fetch(
                "SELECT action, actor, reason, result FROM operator_action WHERE workflow_id = 'doomed' "
                "AND action IN ('set_run_strategy', 'archive', 'delete') ORDER BY created_at"
            )
        finally:
            await conn.close()
        assert [(a["action"], a["actor"], a["reason"]) for a in audit] == [
            ("set_run_strategy", "operator-ada", "drain"),
            ("archive", "operator-ada", "retired"),
            ("delete", "operator-ada", "gone for good"),
        ]
        assert "forced" in audit[2]["result"]

        # The id is free again: versions go on from the deleted one's, and runs work.
        pushed = await client.push(QUICK)
        assert pushed.version == 2 and pushed.created is True
        again = await client.start("doomed")
        info = await wait_for(client, again.instance_id)
        assert info["status"] == "succeeded" and [s["step_id"] for s in info["steps"]] == ["only"]

        # Without active runs no force is needed; a reason always is.
        with pytest.raises(ApiError) as err:
            await client.call("workflow.delete", {"workflow_id": "doomed"})
        assert err.value.code == "bad_request" and "reason" in err.value.message
        res = await client.call("workflow.delete", {"workflow_id": "doomed", "reason": "done"})
        assert res["deleted"] is True and res["runs"] == 1
        with pytest.raises(ApiError) as err:
            await client.call("workflow.delete", {"workflow_id": "doomed", "reason": "again"})
        assert err.value.code == "not_found"
