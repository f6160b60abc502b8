"""The S3 artifact store against a real S3 HTTP server (moto's, in its own process): files uploaded under
the attempt's keys with their listing, credentials from variables or secret files and never in a repr
or an error, a missing bucket failing the step by name, and the store chosen by configuration."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from legato.executor.artifacts import ArtifactStore
from legato.executor.step_runner import StepFailed
from legato.protocol.messages import WorkItem
from tests.support.s3_server import S3Server, s3_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[S3Server]:
    with s3_server(
        "AKIA" + secrets.token_hex(8).upper(), "sk-" + secrets.token_hex(20), tmp_path / "moto.log"
    ) as s:
        yield s


def item() -> WorkItem:
    return WorkItem(
        attempt_id="a",
        workflow_id="wf",
        instance_id="i/1",
        step_id="s",
        attempt=2,
        step_type="shell",
        reply_subject="r",
    )


def test_artifacts_are_uploaded_and_listed(server: S3Server, tmp_path: Path) -> None:
    client = server.client()
    client.create_bucket(Bucket="runs")
    work = tmp_path / "work"
    (work / "out").mkdir(parents=True)
    (work / "report.csv").write_text("a,b\n1,2\n")
    (work / "out" / "big.bin").write_bytes(b"x" * (9 * 1024 * 1024))  # multipart
    key_file = tmp_path / "secret-key"
    key_file.write_text(server.secret_access_key + "\n")  # as a mounted Kubernetes Secret
    env = {
        "LEGATO_ARTIFACTS_DIR": str(tmp_path / "local"),  # S3 wins when both are configured
        "LEGATO_ARTIFACTS_S3_BUCKET": "runs",
        "LEGATO_ARTIFACTS_S3_PREFIX": "/legato/",
        "LEGATO_ARTIFACTS_S3_ENDPOINT": server.endpoint,
        "LEGATO_ARTIFACTS_S3_ACCESS_KEY_ID": server.access_key_id,
        "LEGATO_ARTIFACTS_S3_SECRET_ACCESS_KEY_FILE": str(key_file),
    }
    store = ArtifactStore.from_environment(env)
    assert server.secret_access_key not in repr(store)
    listing = store.keep(item(), work, ["report.csv", "out/*.bin"])
    assert listing == [
        {
            "path": "report.csv",
            "uri": "s3://runs/legato/wf/i_1/s/2/report.csv",
            "bytes": 8,
            "sha256": hashlib.sha256(b"a,b\n1,2\n").hexdigest(),
        },
        {
            "path": "out/big.bin",
            "uri": "s3://runs/legato/wf/i_1/s/2/out/big.bin",
            "bytes": 9 * 1024 * 1024,
            "sha256": hashlib.sha256(b"x" * (9 * 1024 * 1024)).hexdigest(),
        },
    ]
    got = client.get_object(Bucket="runs", Key="legato/wf/i_1/s/2/report.csv")
    assert got["Body"].read() == b"a,b\n1,2\n"
    assert got["Metadata"]["sha256"] == hashlib.sha256(b"a,b\n1,2\n").hexdigest()
    assert not (tmp_path / "local").exists()
    # The same configuration gives the same store (one client per executor, not per attempt).
    assert ArtifactStore.from_environment(env).s3 is store.s3
    # LEGATO_ARTIFACTS_STORE=local keeps them on disk even with a bucket configured.
    local = ArtifactStore.from_environment({**env, "LEGATO_ARTIFACTS_STORE": "local"})
    assert local.s3 is None and local.keep(item(), work, ["report.csv"])[0]["uri"].startswith("file://")


def test_a_missing_bucket_or_half_credentials_fail_by_name(server: S3Server, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "a.txt").write_text("a")
    env = {
        "LEGATO_ARTIFACTS_S3_BUCKET": "nope",
        "LEGATO_ARTIFACTS_S3_ENDPOINT": server.endpoint,
        "LEGATO_ARTIFACTS_S3_ACCESS_KEY_ID": server.access_key_id,
        "LEGATO_ARTIFACTS_S3_SECRET_ACCESS_KEY": server.secret_access_key,
    }
    with pytest.raises(StepFailed) as failed:
        ArtifactStore.from_environment(env).keep(item(), work, ["a.txt"])
    assert "artifact 'a.txt': cannot upload to s3://nope/wf/i_1/s/2/a.txt" in failed.value.error
    assert "NoSuchBucket" in failed.value.error or "does not exist" in failed.value.error
    assert server.secret_access_key not in failed.value.error
    with pytest.raises(StepFailed, match="set both LEGATO_ARTIFACTS_S3_ACCESS_KEY_ID"):
        ArtifactStore.from_environment(
            {"LEGATO_ARTIFACTS_S3_BUCKET": "b", "LEGATO_ARTIFACTS_S3_ACCESS_KEY_ID": "x"}
        )
    with pytest.raises(
        StepFailed, match="LEGATO_ARTIFACTS_STORE=s3 but LEGATO_ARTIFACTS_S3_BUCKET is not set"
    ):
        ArtifactStore.from_environment({"LEGATO_ARTIFACTS_STORE": "s3"})
    with pytest.raises(StepFailed, match="LEGATO_ARTIFACTS_S3_SECRET_ACCESS_KEY_FILE: cannot read"):
        ArtifactStore.from_environment(
            {
                "LEGATO_ARTIFACTS_S3_BUCKET": "b",
                "LEGATO_ARTIFACTS_S3_ACCESS_KEY_ID": "x",
                "LEGATO_ARTIFACTS_S3_SECRET_ACCESS_KEY_FILE": str(tmp_path / "missing"),
            }
        )
