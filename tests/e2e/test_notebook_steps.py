"""``notebook`` steps on the real stack: params injected after the `parameters` cell, the executed
notebook kept as an artifact (also when a cell fails), a failing cell named in `legato show`, and the
step's timeout killing the notebook's process group, kernel included."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import psutil

from legato.config.settings import Settings
from tests.e2e.test_secrets import cli
from tests.support.stack import running_stack, wait_for

WORKFLOW = """
id: nb
params:
  x: {{type: int, default: 1}}
steps:
  - id: run
    type: notebook
    notebook: {path}
    {extra}
"""


def write_notebook(path: Path, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("x = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *(nbformat.v4.new_code_cell(c) for c in cells)]
    nbformat.write(nb, path)
    return path


def outputs_text(uri: str) -> str:
    nb = json.loads(Path(uri.removeprefix("file://")).read_text())
    texts = [o.get("text", "") for c in nb["cells"] for o in c.get("outputs", [])]
    return "".join("".join(t) if isinstance(t, list) else t for t in texts)


async def test_a_notebook_runs_with_params_and_is_kept(settings: Settings, tmp_path: Path) -> None:
    ok = write_notebook(tmp_path / "double.ipynb", "y = x * 2\nprint('y is', y)", "print(1 / (x - 3))")
    slow = write_notebook(tmp_path / "slow.ipynb", "import time\ntime.sleep(600)")
    env = {"LEGATO_ARTIFACTS_DIR": str(tmp_path / "artifacts")}
    async with running_stack(settings, tmp_path / "stack", extra_env=env) as (_stack, client):
        await client.push(WORKFLOW.format(path=ok, extra=""))
        good = await wait_for(client, (await client.start("nb", {"x": 21})).instance_id, timeout=120)
        bad = await wait_for(client, (await client.start("nb", {"x": 3})).instance_id, timeout=120)
        shown = cli(settings, "show", bad["instance_id"])
        await client.push(WORKFLOW.format(path=slow, extra="timeout: 20s").replace("id: nb", "id: nb-slow"))
        timed = await wait_for(client, (await client.start("nb-slow", {})).instance_id, timeout=120)

    [step] = good["steps"]
    assert step["status"] == "succeeded", step
    assert step["outputs"]["notebook"].endswith("/nb/" + good["instance_id"] + "/run/1/executed.ipynb")
    assert "y is 42" in outputs_text(step["outputs"]["notebook"])

    [step] = bad["steps"]
    attempt = step["attempts"][0]
    # Cell 1 is `parameters`, 2 the injected one, 3 and 4 the notebook's own.
    assert attempt["error"] == "cell 4 failed: ZeroDivisionError: division by zero", attempt
    assert "cell 4 failed: ZeroDivisionError: division by zero" in shown
    assert "y is 6" in outputs_text(attempt["outputs"]["notebook"])  # kept, up to the failing cell

    attempt = timed["steps"][0]["attempts"][0]
    assert (attempt["failure_kind"], attempt["error"]) == ("timeout", "timed out after 20s"), attempt
    # Nothing of it is left running: no worker and no kernel started from an attempt's folder.
    leftovers = [
        cmd
        for p in psutil.process_iter(["cmdline"])
        if (cmd := " ".join(p.info["cmdline"] or []))
        and ("ipykernel_launcher" in cmd or "legato.executor.nbrunner" in cmd)
        and "/legato-" in cmd
    ]
    assert leftovers == []
