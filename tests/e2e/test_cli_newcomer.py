"""The CLI as a newcomer meets it: one-line errors (never a traceback), one --param parser, flags after
the command, whole run ids in tables, and step output in `show` and `logs` — all as subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from legato.config.settings import Settings
from legato.devstack.ports import free_port
from tests.support.stack import running_stack, wait_for

# One worker at a time: these share legato dev's machine-wide Postgres cache (make test runs two workers).
pytestmark = pytest.mark.xdist_group("dev")

ECHO = """
id: echoer
run_strategy: sequential
params:
  name: {type: string, default: world}
  pause: {type: int, default: 0}
steps:
  - id: talk
    type: shell
    command: |
      for i in $(seq 1 40); do echo "line $i of ${params.name}"; done
      sleep ${params.pause}
"""


def legato(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "legato.cli.main", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def bare_env(tmp: Path) -> dict[str, str]:
    """The user's environment without any LEGATO_* (so only flags and .legato/dev.json count), but
    for the user's own credentials (the suite's NATS requires them)."""
    keep = ("LEGATO_NATS_CREDS", "LEGATO_AUTH_USERS")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEGATO_") or k in keep}
    env["LEGATO_STATE_DIR"] = str(tmp / ".legato")
    return env


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_nats_down_is_one_line_naming_the_url_and_where_it_came_from(tmp_path: Path) -> None:
    dead = f"nats://127.0.0.1:{free_port(0)}"
    env = bare_env(tmp_path)
    line = one_line_error(legato("workflow", "list", env={**env, "LEGATO_NATS_URL": dead}))
    assert dead in line and "LEGATO_NATS_URL" in line
    line = one_line_error(legato("instances", "--nats-url", dead, env=env))
    assert dead in line and "--nats-url" in line
    # A dev.json left by a `legato dev` that is gone.
    state = tmp_path / ".legato"
    state.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()
    (state / "dev.json").write_text(json.dumps({"nats_url": dead, "pid": gone.pid}))
    line = one_line_error(legato("show", "some-run", env=env))
    assert dead in line and "dev.json" in line and "make run" in line


def test_bad_input_before_any_server_is_one_line(tmp_path: Path) -> None:
    env = bare_env(tmp_path)
    dead = f"nats://127.0.0.1:{free_port(0)}"
    done = legato("tag", "set", "X", "abc", "--nats-url", dead, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "a whole number or 'none', got 'abc'" in done.stderr
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"id: x\ndescription: caf\xe9\nsteps: [{id: a, type: noop}]\n")
    for cmd in (["workflow", "validate", str(latin)], ["workflow", "plan", str(latin)]):
        done = legato(*cmd, env=env)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert "not UTF-8 text (byte 0xe9" in done.stdout + done.stderr
    line = one_line_error(legato("start", "echoer", "--param", "name=null", "--nats-url", dead, env=env))
    assert "null is not a param value" in line and "name" in line


def test_plan_reads_params_like_start(tmp_path: Path) -> None:
    defn = tmp_path / "echo.yaml"
    defn.write_text(ECHO)
    done = legato("workflow", "plan", str(defn), "--param", 'name="007"', "--param", "pause=2", "--json")
    assert done.returncode == 0, done.stderr
    params = json.loads(done.stdout)["params"]
    resolved = {p["name"]: p["value"] for p in params} if isinstance(params, list) else params
    assert "007" in json.dumps(resolved) and '\\"007\\"' not in json.dumps(resolved)
    line = one_line_error(legato("workflow", "plan", str(defn), "-p", "pause=null"))
    assert "null is not a param value" in line


async def test_cli_against_a_stack_flags_after_command_tables_logs_and_limits(
    settings: Settings, tmp_path: Path
) -> None:
    env = bare_env(tmp_path)
    url = ["--nats-url", settings.nats_url, "--namespace", settings.namespace]
    defn = tmp_path / "echo.yaml"
    defn.write_text(ECHO)

    async def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(legato, *args, env=env, cwd=tmp_path)

    async with running_stack(settings, tmp_path) as (_stack, client):
        # Global flags after the command.
        done = await cli("workflow", "push", str(defn), *url)
        assert done.returncode == 0, done.stderr
        # A definition over the server's max payload (8 MB on the embedded server): one line.
        big = tmp_path / "big.yaml"
        big.write_text(ECHO + "# " + "x" * (9 * 1024 * 1024) + "\n")
        line = one_line_error(await cli("workflow", "push", str(big), *url))
        assert "request_too_large" in line and "max_payload" in line
        # The null param is refused by start as by plan.
        line = one_line_error(await cli("start", "echoer", "-p", "name=null", *url))
        assert "null is not a param value" in line
        # A long run, and one queued behind it: the queued one's why names the first run in full.
        first = (await cli("start", "echoer", "-p", "name=Ada", "-p", "pause=30", *url)).stdout.strip()
        await wait_for(client, first, statuses=("running",))
        second = (await cli("start", "echoer", "-p", "name=Bob", *url)).stdout.strip()
        await wait_for(client, second, statuses=("queued",))
        listed = await cli("instances", "echoer", *url)
        assert listed.returncode == 0, listed.stderr
        row = next(line for line in listed.stdout.splitlines() if line.startswith(second))
        assert first in row, listed.stdout
        await client.call("instance.kill", {"instance_id": first, "reason": "test"})
        await wait_for(client, second, timeout=90)
        # show prints the attempt's log tail; logs prints everything stored.
        shown = await cli("show", second, *url)
        assert shown.returncode == 0, shown.stderr
        assert "| line 40 of Bob" in shown.stdout and "line 1 of Bob" not in shown.stdout
        logs = await cli("logs", second, "talk", *url)
        assert logs.returncode == 0, logs.stderr
        assert "line 1 of Bob" in logs.stdout and "line 40 of Bob" in logs.stdout
        assert "==> talk attempt 1 (succeeded) <==" in logs.stdout
        line = one_line_error(await cli("logs", second, "nostep", *url))
        assert "no step 'nostep'" in line and "talk" in line
        start = time.monotonic()
        assert (await cli("logs", second, *url)).returncode == 0
        assert time.monotonic() - start < 60


def test_dev_takes_server_flags_after_the_command_and_says_in_one_line_what_failed(tmp_path: Path) -> None:
    env = bare_env(tmp_path)
    dead_nats = f"nats://127.0.0.1:{free_port(0)}"
    dead_pg = f"postgresql://someone:secret@127.0.0.1:{free_port(0)}/legato"
    done = legato(
        "dev", "--nats-url", dead_nats, "--database-url", dead_pg, "--no-demo", env=env, cwd=tmp_path
    )
    assert f"using NATS at {dead_nats}" in done.stdout
    line = one_line_error(done)
    assert "cannot reach PostgreSQL at" in line and "(--database-url)" in line and "secret" not in line


def test_nats_up_but_no_legato_there_is_one_line(nats_url: str, namespace: str, tmp_path: Path) -> None:
    done = legato(
        "workflow", "list", "--nats-url", nats_url, "--namespace", namespace, env=bare_env(tmp_path)
    )
    line = one_line_error(done)
    assert nats_url in line and "(from --nats-url)" in line and "no Legato trigger service" in line
