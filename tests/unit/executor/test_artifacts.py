"""Which files of a step's folder become artifacts, and where the store puts them."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from legato.executor.artifacts import ArtifactStore, matching_files
from legato.executor.step_runner import StepFailed
from legato.protocol.messages import WorkItem


def folder_with_files(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    (work / "out" / "deep").mkdir(parents=True)
    (work / "report.csv").write_text("a,b\n1,2\n")
    (work / "out" / "x.parquet").write_bytes(b"PAR1")
    (work / "out" / "deep" / "y.parquet").write_bytes(b"PAR2")
    (tmp_path / "secret.txt").write_text("outside")
    os.symlink(tmp_path / "secret.txt", work / "link.txt")
    return work


def test_paths_and_globs_stay_inside_the_folder(tmp_path: Path) -> None:
    work = folder_with_files(tmp_path)
    rel = [
        p.relative_to(work.resolve()).as_posix()
        for p in matching_files(work, ["report.csv", "out/**/*.parquet"])
    ]
    assert rel == ["report.csv", "out/deep/y.parquet", "out/x.parquet"]
    assert matching_files(work, ["*.txt", "nothing/*"]) == []  # the symlink out is not taken
    with pytest.raises(StepFailed, match=r"^artifact 'missing.csv' was not produced"):
        matching_files(work, ["missing.csv"])
    with pytest.raises(StepFailed, match="not produced"):
        matching_files(work, ["link.txt"])


def test_the_store_copies_and_lists_them(tmp_path: Path) -> None:
    work = folder_with_files(tmp_path)
    item = WorkItem(
        attempt_id="a",
        workflow_id="wf",
        instance_id="i/1",
        step_id="s",
        attempt=2,
        step_type="shell",
        reply_subject="r",
    )
    listing = ArtifactStore(tmp_path / "store").keep(item, work, ["report.csv"])
    dest = tmp_path / "store" / "wf" / "i_1" / "s" / "2" / "report.csv"
    assert dest.read_text() == "a,b\n1,2\n"
    assert listing == [
        {
            "path": "report.csv",
            "uri": dest.resolve().as_uri(),
            "bytes": 8,
            "sha256": hashlib.sha256(b"a,b\n1,2\n").hexdigest(),
        }
    ]
    with pytest.raises(StepFailed, match="no artifact store"):
        ArtifactStore(None).keep(item, work, ["report.csv"])
    assert ArtifactStore(None).keep(item, work, []) == []
