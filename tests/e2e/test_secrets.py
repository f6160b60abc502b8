"""Secrets on the real stack: a step gets the value of a named secret, and the value is nowhere else —
not in Postgres, not on NATS (streams or any subject), not in service logs, exported spans, the API or
the CLI — even though the step prints it, writes it to its outputs and fails with it in stderr."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from legato.client import ApiError
from legato.config.settings import Settings
from legato.devstack.otlp_sink import OtlpSink
from tests.support.stack import running_stack, wait_for

SECRETIVE = """
id: secretive
params:
  token: {type: secret, default: api_token}
  db: {type: secret, default: db_password, values: [db_password]}
  digests: {type: string}
steps:
  - id: use
    type: shell
    env: {DB_PASSWORD: "${params.db}", DIGESTS: "${params.digests}"}
    command: |
      echo "token is ${params.token} and db is $DB_PASSWORD"
      echo "stderr: ${params.token}" >&2
      printf '%s' ${params.token} | sha256sum | cut -c1-64 > "$DIGESTS/token"
      printf '%s' "$DB_PASSWORD" | sha256sum | cut -c1-64 > "$DIGESTS/db"
      printf '%s' "$LEGATO_PARAM_TOKEN" | sha256sum | cut -c1-64 > "$DIGESTS/param"
      echo "leak=${params.token}" >> "$LEGATO_OUTPUTS"
      echo "also=prefix-$DB_PASSWORD-suffix" >> "$LEGATO_OUTPUTS"
    outputs: [leak, also]
  - id: py
    type: python
    depends_on: [use]
    function: "secret_steps:digest"
    outputs: [digest, leak]
  - id: boom
    type: shell
    depends_on: [py]
    command: 'echo "failing with ${params.token} / $LEGATO_SECRET_DB_PASSWORD" >&2; exit 3'
"""


PY_STEPS = """
import hashlib, sys


def digest(params):
    print("python got", params["token"])
    print("python stderr", params["db"], file=sys.stderr)
    return {"digest": hashlib.sha256(params["token"].encode()).hexdigest(), "leak": "x" + params["db"]}
"""


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def database_text(url: str) -> str:
    """Every row of every table of the test database, as text."""
    conn = await asyncpg.connect(url)
    try:
        tables = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE'"
        )
        assert len(tables) > 5
        chunks = []
        for t in tables:
            rows = await conn.fetch(f'SELECT t::text AS row FROM "{t["table_schema"]}"."{t["table_name"]}" t')
            chunks.extend(r["row"] for r in rows)
        return "\n".join(chunks)
    finally:
        await conn.close()


async def streams_text(client: Any, namespace: str) -> bytes:
    """Every message still held by the namespace's JetStream streams."""
    js = client.nc.jetstream()
    out: list[bytes] = []
    for info in await js.streams_info():
        if namespace not in info.config.name:
            continue
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                msg = await js.get_msg(info.config.name, seq)
            except NotFoundError:
                continue
            out.append(msg.data or b"")
            out.append(json.dumps(msg.headers or {}).encode())
    return b"\n".join(out)


def cli(settings: Settings, *args: str) -> str:
    env = {**os.environ, "LEGATO_NATS_URL": settings.nats_url, "LEGATO_NAMESPACE": settings.namespace}
    done = subprocess.run(
        [sys.executable, "-m", "legato.cli.main", *args], env=env, capture_output=True, text=True, timeout=60
    )
    return done.stdout + done.stderr


@pytest.mark.slow
async def test_a_secret_reaches_its_step_and_nothing_else(settings: Settings, tmp_path: Path) -> None:
    token = "tok-" + secrets.token_hex(16)
    db_password = "pw-" + secrets.token_hex(16)
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "db_password").write_text(db_password + "\n")  # as a mounted Kubernetes Secret
    digests = tmp_path / "digests"
    digests.mkdir()
    seen_on_nats: list[bytes] = []

    async def record(msg: Msg) -> None:
        seen_on_nats.append(
            msg.subject.encode() + b" " + (msg.data or b"") + json.dumps(msg.headers or {}).encode()
        )

    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "secret_steps.py").write_text(PY_STEPS)
    with OtlpSink() as sink:
        env = {
            **sink.env(),
            "PYTHONPATH": os.pathsep.join([str(modules), os.environ.get("PYTHONPATH", "")]),
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "LEGATO_SECRET_API_TOKEN": token,
            "LEGATO_SECRETS_DIR": str(secrets_dir),
        }
        async with running_stack(settings, tmp_path / "stack", extra_env=env) as (stack, client):
            sub = await client.nc.subscribe(">", cb=record)
            await client.push(SECRETIVE)
            started = await client.start("secretive", {"digests": str(digests)})
            info = await wait_for(client, started.instance_id, timeout=90)
            # A run cannot name a secret its definition does not allow.
            with pytest.raises(ApiError) as err:
                await client.start("secretive", {"digests": str(digests), "db": "api_token"})
            assert err.value.code == "invalid_params"
            shown = cli(settings, "show", started.instance_id)
            shown_json = cli(settings, "show", started.instance_id, "--json")
            await asyncio.sleep(1.0)  # spans exported every 200 ms
            await sub.unsubscribe()
            streams = await streams_text(client, settings.namespace)
            logs = stack.logs() + "".join(
                s.log_path.read_text(errors="replace") for s in stack.services.values() if s.log_path.exists()
            )
        database = await database_text(settings.database_url)
        spans = b"".join(sink.trace_bodies)

    # The step really had both secrets (by their digests), through ${params.x}, env: and LEGATO_PARAM_*.
    assert (digests / "token").read_text().strip() == sha(token)
    assert (digests / "db").read_text().strip() == sha(db_password)
    assert (digests / "param").read_text().strip() == sha(token)
    # What it reported is masked.
    assert info["status"] == "failed", info
    steps = {s["step_id"]: s for s in info["steps"]}
    assert steps["use"]["status"] == "succeeded"
    assert steps["use"]["outputs"] == {"leak": "***", "also": "prefix-***-suffix"}
    assert "token is *** and db is ***" in steps["use"]["attempts"][0]["log_tail"]
    # A python step gets the values in its params dict; what it returns and prints is masked too.
    assert steps["py"]["outputs"] == {"digest": sha(token), "leak": "x***"}
    assert "python got ***" in steps["py"]["attempts"][0]["log_tail"]
    assert "python stderr ***" in steps["py"]["attempts"][0]["log_tail"]
    boom = steps["boom"]["attempts"][0]
    assert "failing with *** / ***" in boom["error"], boom
    # Only the references were stored and shown.
    assert info["params"]["token"] == {"$secret": "api_token"}
    assert sink.trace_bodies and seen_on_nats and database and "secretive" in shown
    for value in (token, db_password):
        assert value not in database
        assert value.encode() not in streams
        assert not [m for m in seen_on_nats if value.encode() in m]
        assert value not in logs
        assert value.encode() not in spans
        assert value not in shown and value not in shown_json
        assert value not in json.dumps(info)


async def test_a_missing_secret_fails_the_step_naming_it(settings: Settings, tmp_path: Path) -> None:
    digests = tmp_path / "digests"
    digests.mkdir()
    env = {"LEGATO_SECRET_DB_PASSWORD": "pw-" + secrets.token_hex(8)}
    async with running_stack(settings, tmp_path / "stack", extra_env=env) as (_stack, client):
        await client.push(SECRETIVE)
        started = await client.start("secretive", {"digests": str(digests), "token": "no_such_secret"})
        info = await wait_for(client, started.instance_id, timeout=60)
    assert info["status"] == "failed"
    error = info["steps"][0]["attempts"][0]["error"]
    assert error == (
        "secret 'no_such_secret' is not available to this executor "
        "(provide the environment variable LEGATO_SECRET_NO_SUCH_SECRET)"
    )
    assert list(digests.iterdir()) == []  # the step never ran
