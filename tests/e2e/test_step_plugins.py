"""A step type from a plugin package, on the real stack: examples/plugin is pip-installed into this
venv, then the trigger validates its steps at push (path-named errors, unknown types refused with the
installed list) and the executor runs them; a failing plugin step is retried and shown in `legato show`."""

from __future__ import annotations

from pathlib import Path

import pytest

from legato.client import ApiError
from legato.config.settings import Settings
from tests.e2e.test_secrets import cli
from tests.support.plugin import PLUGIN_DIR, install_example_plugin
from tests.support.stack import running_stack, wait_for

# One worker at a time: these share the venv the example plugin is pip-installed into (make test runs two workers).
pytestmark = pytest.mark.xdist_group("plugin")

SLOW = """
id: slow-count
steps:
  - {id: count, type: word_count, text: "a b", pause: 600, timeout: 2s}
"""


@pytest.mark.slow
async def test_an_installed_plugin_step_type_runs_through_the_services(
    settings: Settings, tmp_path: Path
) -> None:
    install_example_plugin(always=True)
    async with running_stack(settings, tmp_path) as (_stack, client):
        await client.push((PLUGIN_DIR / "word-count.yaml").read_text(), source="word-count.yaml")
        ok = await wait_for(
            client,
            (await client.start("word-count", {"text": "The cat and the hat and THE bat"})).instance_id,
        )
        empty = await wait_for(client, (await client.start("word-count", {"text": "... !"})).instance_id)
        shown = cli(settings, "show", empty["instance_id"])
        await client.push(SLOW)
        slow = await wait_for(client, (await client.start("slow-count", {})).instance_id)
        with pytest.raises(ApiError) as unknown:
            await client.push("id: t\nsteps:\n  - {id: a, type: word_cont, text: x}\n")
        with pytest.raises(ApiError) as bad_config:
            await client.push("id: t\nsteps:\n  - {id: a, type: word_count, text: 3, topp: 1}\n")

    steps = {s["step_id"]: s for s in ok["steps"]}
    assert ok["status"] == "succeeded", ok
    assert steps["count"]["outputs"] == {"words": 8, "distinct": 5, "top": [["the", 3], ["and", 2]]}
    assert steps["report"]["attempts"][0]["log_tail"] == "8 words, most frequent the\n"

    count = {s["step_id"]: s for s in empty["steps"]}["count"]
    assert empty["status"] == "failed" and len(count["attempts"]) == 2, count  # retry: {error: 1}
    assert [a["error"] for a in count["attempts"]] == ["nothing to count: the text has no words"] * 2
    assert "nothing to count: the text has no words" in shown

    attempt = slow["steps"][0]["attempts"][0]
    assert (attempt["failure_kind"], attempt["error"]) == ("timeout", "timed out after 2s"), attempt

    assert unknown.value.code == "invalid_definition"
    [error] = unknown.value.details["errors"]
    assert error["path"] == "steps[0].type"
    assert error["message"] == (
        "must be one of the installed step types: noop, sleep, shell, python, http, sql, notebook, container, subworkflow, "
        "foreach, loop, word_count; got 'word_cont' (did you mean 'word_count'?)"
    )
    assert bad_config.value.details["errors"] == [
        {"path": "steps[0].topp", "message": "unknown field (did you mean 'top'?)"},
        {"path": "steps[0].text", "message": "expected str, got int"},
    ]
