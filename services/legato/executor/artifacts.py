"""Files a step declares it produces (``artifacts:``), kept after its folder is removed.

The store is chosen by the executor's configuration: a local directory (``LEGATO_ARTIFACTS_DIR``, else
``$LEGATO_STATE_DIR/artifacts``; in Kubernetes a shared volume), or an S3-compatible bucket
(``LEGATO_ARTIFACTS_S3_BUCKET``; see ``legato.executor.s3_store``), which wins when both are set unless
``LEGATO_ARTIFACTS_STORE=local``. An attempt's files go to
``<dir or s3://bucket/prefix>/<workflow>/<instance>/<step>/<attempt>/<path inside the step's folder>``;
the step's outputs list them under ``artifacts`` (``path``, ``uri``, ``bytes``, ``sha256``), so outputs
stay small.
A declared path (not a glob) that the step did not produce fails the step; a glob may match nothing.
Only regular files inside the step's folder are taken: a symlink out of it, a directory or a device is
not.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from legato.executor.s3_store import S3Store
from legato.executor.step_runner import StepFailed
from legato.protocol.messages import JSONValue, WorkItem

ARTIFACTS_DIR_VAR = "LEGATO_ARTIFACTS_DIR"
STORE_KIND_VAR = "LEGATO_ARTIFACTS_STORE"
STATE_DIR_VAR = "LEGATO_STATE_DIR"
MAX_FILES = 1000
MAX_TOTAL_BYTES = 10 * 1024**3
_UNSAFE = re.compile(r"[^A-Za-z0-9_.=-]")


def _safe(part: str) -> str:
    return _UNSAFE.sub("_", part)[:120] or "_"


def is_glob(pattern: str) -> bool:
    """True if the declared artifact is a glob pattern rather than one path."""
    return glob.has_magic(pattern)


def matching_files(folder: Path, patterns: list[str], *, required: bool = True) -> list[Path]:
    """Regular files under ``folder`` matching ``patterns`` (relative), in order, never outside it;
    ``required``: a declared path (not a glob) that is missing fails the step."""
    root = folder.resolve()
    found: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, root_dir=root, recursive=True)) if is_glob(pattern) else [pattern]
        hits = 0
        for rel in matches:
            path = (root / rel).resolve()
            if not path.is_relative_to(root) or not path.is_file() or (root / rel).is_symlink():
                continue
            if path not in found:
                found.append(path)
            hits += 1
        if required and not hits and not is_glob(pattern):
            raise StepFailed(f"artifact {pattern!r} was not produced (no such file in the step's folder)")
    if len(found) > MAX_FILES:
        raise StepFailed(f"artifacts: {len(found)} files match, more than {MAX_FILES}")
    return found


def attempt_parts(item: WorkItem) -> tuple[str, ...]:
    """``(workflow, instance, step, attempt)``, each made safe as one path segment."""
    return tuple(_safe(p) for p in (item.workflow_id, item.instance_id, item.step_id, str(item.attempt)))


@dataclass(frozen=True)
class ArtifactStore:
    """Where every attempt's artifacts are kept: a local directory, or an S3-compatible bucket."""

    root: Path | None
    s3: S3Store | None = None

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> ArtifactStore:
        """The store this executor's environment configures (none: steps declaring artifacts fail)."""
        env = dict(os.environ) if environ is None else environ
        kind = env.get(STORE_KIND_VAR, "").strip().lower()
        if kind not in ("", "local", "s3"):
            raise StepFailed(f"{STORE_KIND_VAR} must be local or s3, got {kind!r}")
        s3 = S3Store.from_environment(env) if kind != "local" else None
        if kind == "s3" and s3 is None:
            raise StepFailed(f"{STORE_KIND_VAR}=s3 but LEGATO_ARTIFACTS_S3_BUCKET is not set")
        folder = env.get(ARTIFACTS_DIR_VAR)
        if not folder and env.get(STATE_DIR_VAR):
            folder = str(Path(env[STATE_DIR_VAR]) / "artifacts")
        return cls(Path(folder) if folder else None, s3)

    @property
    def configured(self) -> bool:
        """True if this store can keep files."""
        return self.root is not None or self.s3 is not None

    def attempt_dir(self, item: WorkItem) -> Path:
        """The local folder of one attempt's artifacts."""
        assert self.root is not None
        return self.root.joinpath(*attempt_parts(item))

    def keep(
        self, item: WorkItem, folder: Path, patterns: list[str], *, required: bool = True
    ) -> list[JSONValue]:
        """Copy the matching files of ``folder`` into the store; their listing for the outputs.

        ``required=False`` (a step that failed anyway): keep what is there, never fail for a missing file.
        """
        if not patterns:
            return []
        if not self.configured:
            raise StepFailed(
                f"the step declares artifacts but this executor has no artifact store "
                f"(set {ARTIFACTS_DIR_VAR} or LEGATO_ARTIFACTS_S3_BUCKET)"
            )
        files = matching_files(folder, patterns, required=required)
        total = sum(f.stat().st_size for f in files)
        if total > MAX_TOTAL_BYTES:
            raise StepFailed(f"artifacts: {total} bytes, more than {MAX_TOTAL_BYTES // 1024**3} GiB")
        root = folder.resolve()
        if self.s3 is not None:
            return self.s3.upload(attempt_parts(item), [(p, p.relative_to(root).as_posix()) for p in files])
        target = self.attempt_dir(item)
        listing: list[JSONValue] = []
        for path in files:
            rel = path.relative_to(root)
            dest = target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            with path.open("rb") as src, dest.open("wb") as out:
                for chunk in iter(lambda: src.read(1024 * 1024), b""):
                    digest.update(chunk)
                    out.write(chunk)
            shutil.copystat(path, dest)
            listing.append(
                {
                    "path": rel.as_posix(),
                    "uri": dest.resolve().as_uri(),
                    "bytes": dest.stat().st_size,
                    "sha256": digest.hexdigest(),
                }
            )
        return listing
