"""Shell steps against hostile input, on the real stack: every substituted value arrives as one literal
argument and nothing else runs; a step sees a minimal environment (not the executor's) plus its own
``env:``; large params reach the step through files."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from legato.client import ApiError
from legato.config.settings import Settings
from tests.support.auth import creds_for
from tests.support.stack import running_stack, wait_for

ECHO = """
id: echo-args
run_strategy: {type: parallel, max_concurrency: 100}
params:
  x: {type: string, default: ""}
  dump: {type: string}
steps:
  - id: args
    type: shell
    env: {DUMP: "${params.dump}"}
    command: |
      set -- ${params.x}
      printf '%s' "$#" > "$DUMP/plain.count"
      printf '%s' "$1" > "$DUMP/plain"
      printf '%s' "${params.x}" > "$DUMP/double"
      printf '%s' '${params.x}' > "$DUMP/single"
      printf '%s' $(printf '%s' "${params.x}" | wc -c) > "$DUMP/subshell.bytes"
"""


def hostile_values(sentinel: Path) -> list[str]:
    s = str(sentinel)
    return [
        f"; touch {s}",
        f"main; touch {s} > out.txt",
        f"$(touch {s})",
        f"`touch {s}`",
        f"' ; touch {s} ; '",
        f'" ; touch {s} ; "',
        f"'\"'\"'; touch {s}; echo '",
        f"\\'; touch {s} #",
        f"a\ntouch {s}\n",
        f"\r\ntouch {s}",
        f"${{IFS}}touch${{IFS}}{s}",
        f"&& touch {s} || touch {s} | touch {s} & touch {s}",
        f"> {s}",
        f"{s}) ; touch {s} ; (",
        "-n",
        "--help",
        "-e \\x41",
        "*",
        "/*",
        "?",
        "[a-z]*",
        "~",
        "~root",
        "$HOME",
        "$LEGATO_PARAM_X",
        "!!",
        "",
        "   spaced   out   ",
        "\ttab",
        "unicode: héllo ✓ \u202e",
        "x" * 100_000 + f"; touch {s}",
    ]


async def test_hostile_params_arrive_as_one_literal_argument_and_run_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    sentinel = tmp_path / "pwned"
    values = hostile_values(sentinel)
    async with running_stack(settings, tmp_path / "stack") as (_stack, client):
        await client.push(ECHO)
        runs = []
        for i, value in enumerate(values):
            dump = tmp_path / f"run{i}"
            dump.mkdir()
            started = await client.start("echo-args", {"x": value, "dump": str(dump)})
            runs.append((value, dump, started.instance_id))
        infos = await asyncio.gather(*(wait_for(client, run_id, timeout=120) for _v, _d, run_id in runs))
        for (value, dump, _run_id), info in zip(runs, infos, strict=True):
            assert info["status"] == "succeeded", (value[:80], info.get("error"), info["steps"])
            assert (dump / "plain.count").read_text() == "1", value[:80]
            for where in ("plain", "double", "single"):
                assert (dump / where).read_bytes() == value.encode(), (where, value[:80])
            assert (dump / "subshell.bytes").read_text() == str(len(value.encode())), value[:80]
    assert not sentinel.exists()
    assert not (tmp_path / "out.txt").exists()


async def test_a_nul_byte_or_an_oversized_param_is_refused_at_start(
    settings: Settings, tmp_path: Path
) -> None:
    sentinel = tmp_path / "pwned"
    dump = tmp_path / "dump"
    dump.mkdir()
    async with running_stack(settings, tmp_path / "stack") as (_stack, client):
        await client.push(ECHO)
        with pytest.raises(ApiError) as err:
            await client.start("echo-args", {"x": f"a\0; touch {sentinel}", "dump": str(dump)})
        assert err.value.code == "invalid_params"
        assert err.value.details["errors"] == [
            {"path": "params.x", "message": "contains a NUL character (\\u0000), which a param cannot hold"}
        ]
        with pytest.raises(ApiError) as err:
            await client.start("echo-args", {"x": "y" * (200 * 1024), "dump": str(dump)})
        assert err.value.code == "invalid_params"
        [issue] = err.value.details["errors"]
        assert issue["path"] == "params.x" and "over the limit of 128 KiB for one param" in issue["message"]
        listed = await client.call("instance.list", {"workflow_id": "echo-args"})
        assert listed["instances"] == []
    assert list(dump.iterdir()) == []
    assert not sentinel.exists()


ENVIRONMENT = """
id: show-env
params:
  dump: {type: string}
  big: {type: string, default: ""}
steps:
  - id: env
    type: shell
    env: {DUMP: "${params.dump}", GREETING: "hello ${params.dump}", COUNT: "${len(params.big)}"}
    command: |
      env > "$DUMP/env"
      printf '%s' "$GREETING" > "$DUMP/greeting"
      cat "$LEGATO_PARAM_BIG_FILE" > "$DUMP/big"
      cat "$LEGATO_PARAMS_FILE" > "$DUMP/params.json"
      echo "count=$COUNT" >> "$LEGATO_OUTPUTS"
    outputs: [count]
"""


async def test_a_step_sees_only_its_declared_environment(settings: Settings, tmp_path: Path) -> None:
    dump = tmp_path / "dump"
    dump.mkdir()
    big = "b" * 100_000
    executor_only = {"EXECUTOR_ONLY_TOKEN": "tok-8c1f"}
    # The executor's own nkey seed (the Stack gives each service its own).
    seed_file = creds_for("executor")
    assert seed_file is not None, "the suite's NATS requires credentials"
    seed = Path(seed_file).read_text().strip()
    async with running_stack(settings, tmp_path / "stack", extra_env=executor_only) as (_stack, client):
        await client.push(ENVIRONMENT)
        started = await client.start("show-env", {"dump": str(dump), "big": big})
        info = await wait_for(client, started.instance_id, timeout=60)
        assert info["status"] == "succeeded", info
        assert info["steps"][0]["outputs"] == {"count": 100_000}
    env = dict(
        line.split("=", 1)
        for line in (dump / "env").read_text().splitlines()
        if "=" in line and line[0] != " "
    )
    text = (dump / "env").read_text()
    # Nothing of the executor's own: no database URL, NATS URL or credentials, no other variable.
    assert settings.database_url not in text and "LEGATO_DATABASE_URL" not in env
    assert "LEGATO_NATS_URL" not in env and "LEGATO_NATS_CREDS" not in env and "LEGATO_AUTH_USERS" not in env
    assert seed_file not in text and seed not in text
    assert "EXECUTOR_ONLY_TOKEN" not in env and "tok-8c1f" not in text
    assert settings.nats_url not in text
    # What it declared and what Legato gives it.
    assert env["DUMP"] == str(dump)
    assert (dump / "greeting").read_text() == f"hello {dump}"
    assert env["LEGATO_STEP_ID"] == "env" and env["LEGATO_WORKFLOW_ID"] == "show-env"
    assert "PATH" in env and "HOME" in env
    allowed = {"PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "PWD", "SHLVL", "_", "OLDPWD"}
    assert {k for k in env if not k.startswith("LEGATO_")} <= allowed | {"DUMP", "GREETING", "COUNT"}
    # A 100 KB param: through a file, not a variable (which would be "Argument list too long").
    assert (dump / "big").read_text() == big
    assert "LEGATO_PARAM_BIG" not in env and "LEGATO_PARAMS" not in env
    assert json.loads((dump / "params.json").read_text())["big"] == big
