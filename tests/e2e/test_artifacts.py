"""Artifacts on the real stack: files a shell step declares are kept in the executor's artifact store
after its folder is gone, listed in its outputs and by `legato show` — also for a failed attempt."""

from __future__ import annotations

import secrets
from pathlib import Path

from legato.config.settings import Settings
from tests.e2e.test_secrets import cli
from tests.support.s3_server import s3_server
from tests.support.stack import running_stack, wait_for

REPORT = """
id: report-files
steps:
  - id: build
    type: shell
    command: |
      mkdir -p parts
      printf 'day,total\\n2026-03-01,220\\n' > report.csv
      echo one > parts/a.txt
      echo two > parts/b.txt
      echo scratch > not-kept.tmp
      echo "rows=1" >> "$LEGATO_OUTPUTS"
    artifacts: [report.csv, "parts/*.txt"]
  - id: broken
    type: shell
    depends_on: [build]
    command: 'echo "half written" > partial.csv; exit 4'
    artifacts: [partial.csv, never-written.csv]
"""


async def test_declared_files_are_kept_listed_and_shown(settings: Settings, tmp_path: Path) -> None:
    store = tmp_path / "artifacts"
    env = {"LEGATO_ARTIFACTS_DIR": str(store)}
    async with running_stack(settings, tmp_path / "stack", extra_env=env) as (_stack, client):
        await client.push(REPORT)
        info = await wait_for(client, (await client.start("report-files", {})).instance_id)
        shown = cli(settings, "show", info["instance_id"])
    steps = {s["step_id"]: s for s in info["steps"]}
    build = steps["build"]
    assert build["status"] == "succeeded"
    kept = build["outputs"]["artifacts"]
    assert [(f["path"], f["bytes"]) for f in kept] == [
        ("report.csv", 25),
        ("parts/a.txt", 4),
        ("parts/b.txt", 4),
    ]
    assert build["outputs"]["rows"] == 1
    folder = store / "report-files" / info["instance_id"] / "build" / "1"
    assert (folder / "report.csv").read_text() == "day,total\n2026-03-01,220\n"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "parts/a.txt",
        "parts/b.txt",
        "report.csv",
    ]
    assert kept[0]["uri"] == (folder / "report.csv").resolve().as_uri()
    # A failed attempt keeps what it wrote; the missing declared file does not hide its exit code.
    broken = steps["broken"]["attempts"][0]
    assert broken["status"] == "failed" and broken["exit_code"] == 4, broken
    assert (store / "report-files" / info["instance_id"] / "broken" / "1" / "partial.csv").read_text() == (
        "half written\n"
    )
    assert "\nartifacts:\n" in shown
    assert f"  build attempt 1: report.csv (25 bytes) {kept[0]['uri']}" in shown
    assert "  broken attempt 1: partial.csv (13 bytes)" in shown


async def test_artifacts_go_to_an_s3_bucket_when_configured(settings: Settings, tmp_path: Path) -> None:
    key_id, secret_key = "AKIA" + secrets.token_hex(8).upper(), "sk-" + secrets.token_hex(20)
    with s3_server(key_id, secret_key, tmp_path / "moto.log") as server:
        server.client().create_bucket(Bucket="legato-artifacts")
        key_file = tmp_path / "s3-secret-key"
        key_file.write_text(secret_key)
        env = {
            "LEGATO_ARTIFACTS_S3_BUCKET": "legato-artifacts",
            "LEGATO_ARTIFACTS_S3_ENDPOINT": server.endpoint,
            "LEGATO_ARTIFACTS_S3_ACCESS_KEY_ID": key_id,
            "LEGATO_ARTIFACTS_S3_SECRET_ACCESS_KEY_FILE": str(key_file),
            "LEGATO_LOG_LEVEL": "debug",
        }
        async with running_stack(settings, tmp_path / "stack", extra_env=env) as (stack, client):
            await client.push(REPORT)
            info = await wait_for(client, (await client.start("report-files", {})).instance_id)
            shown = cli(settings, "show", info["instance_id"])
            logs = stack.logs()
        run = info["instance_id"]
        body = server.client().get_object(
            Bucket="legato-artifacts", Key=f"report-files/{run}/build/1/report.csv"
        )
        assert body["Body"].read() == b"day,total\n2026-03-01,220\n"
        failed = server.client().get_object(
            Bucket="legato-artifacts", Key=f"report-files/{run}/broken/1/partial.csv"
        )
        assert failed["Body"].read() == b"half written\n"
    build = {s["step_id"]: s for s in info["steps"]}["build"]
    uri = f"s3://legato-artifacts/report-files/{run}/build/1/report.csv"
    assert build["outputs"]["artifacts"][0]["uri"] == uri
    assert f"  build attempt 1: report.csv (25 bytes) {uri}" in shown, shown
    for text in (shown, logs, repr(info)):
        assert secret_key not in text
