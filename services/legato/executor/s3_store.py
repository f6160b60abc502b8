"""Artifacts in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, ...), uploaded with boto3.

Configured on the executor (never in a definition):

- ``LEGATO_ARTIFACTS_S3_BUCKET`` (required to use S3) and ``LEGATO_ARTIFACTS_S3_PREFIX`` (optional key
  prefix);
- ``LEGATO_ARTIFACTS_S3_ENDPOINT``: the URL of an S3-compatible server (default: AWS);
  ``LEGATO_ARTIFACTS_S3_REGION`` (default ``us-east-1``);
- credentials: ``LEGATO_ARTIFACTS_S3_ACCESS_KEY_ID`` / ``LEGATO_ARTIFACTS_S3_SECRET_ACCESS_KEY``, or
  the same names ending in ``_FILE`` holding paths of files with the values (a mounted Kubernetes
  Secret); without either, boto3's own chain (``AWS_*`` variables, an instance or pod role).

The credentials stay in this process: steps never see them (``step_env`` passes none of these
variables), they are not part of any repr, and an upload error is reported without them. Objects go to
``<prefix>/<workflow>/<instance>/<step>/<attempt>/<path>``, listed as ``s3://bucket/key``.
Needs the ``s3`` extra (boto3).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from legato.executor.step_runner import StepFailed
from legato.protocol.messages import JSONValue

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

PREFIX = "LEGATO_ARTIFACTS_S3_"
BUCKET_VAR = PREFIX + "BUCKET"
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
MAX_ATTEMPTS = 3

_cache: dict[tuple[str, ...], S3Store] = {}
_cache_lock = threading.Lock()


def _secret(env: Mapping[str, str], name: str) -> str | None:
    """``<name>``, or the content of the file ``<name>_FILE`` names (trailing newline dropped)."""
    if env.get(name):
        return env[name]
    path = env.get(name + "_FILE")
    if not path:
        return None
    try:
        return Path(path).read_text().rstrip("\r\n")
    except OSError as exc:
        raise StepFailed(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None


@dataclass
class S3Store:
    """One bucket (and key prefix) of an S3-compatible server, with its client made on first use."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    _client: S3Client | None = field(default=None, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> S3Store | None:
        """The store ``LEGATO_ARTIFACTS_S3_*`` configure, or None without a bucket; one per config."""
        bucket = env.get(BUCKET_VAR, "").strip()
        if not bucket:
            return None
        key = (
            bucket,
            env.get(PREFIX + "PREFIX", "").strip("/"),
            env.get(PREFIX + "ENDPOINT", "").strip(),
            env.get(PREFIX + "REGION", "").strip() or "us-east-1",
            _secret(env, PREFIX + "ACCESS_KEY_ID") or "",
            _secret(env, PREFIX + "SECRET_ACCESS_KEY") or "",
        )
        if bool(key[4]) != bool(key[5]):
            raise StepFailed(
                f"set both {PREFIX}ACCESS_KEY_ID and {PREFIX}SECRET_ACCESS_KEY (or their _FILE forms), or neither"
            )
        with _cache_lock:
            store = _cache.get(key)
            if store is None:
                store = cls(key[0], key[1], key[2] or None, key[3], key[4] or None, key[5] or None)
                _cache[key] = store
            return store

    def client(self) -> S3Client:
        """The boto3 client (created once; boto3 clients are thread-safe once made)."""
        with self._lock:
            if self._client is None:
                try:
                    import boto3
                    from botocore.config import Config
                except ImportError:
                    raise StepFailed(
                        "artifacts: the S3 store needs boto3 on the executor (pip install 'legato[s3]')"
                    ) from None
                self._client = boto3.session.Session().client(
                    "s3",
                    endpoint_url=self.endpoint,
                    region_name=self.region,
                    aws_access_key_id=self.access_key_id,
                    aws_secret_access_key=self.secret_access_key,
                    config=Config(
                        connect_timeout=CONNECT_TIMEOUT,
                        read_timeout=READ_TIMEOUT,
                        retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
                    ),
                )
            return self._client

    def key(self, parts: Sequence[str], rel: str) -> str:
        """The object key of one artifact."""
        return "/".join([*([self.prefix] if self.prefix else []), *parts, rel])

    def upload(self, parts: Sequence[str], files: Sequence[tuple[Path, str]]) -> list[JSONValue]:
        """Upload ``(file, relative path)`` pairs under the attempt's keys; their listing."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client()
        listing: list[JSONValue] = []
        for path, rel in files:
            key = self.key(parts, rel)
            digest = hashlib.sha256()
            size = 0
            with path.open("rb") as src:
                for chunk in iter(lambda: src.read(1024 * 1024), b""):
                    digest.update(chunk)
                    size += len(chunk)
            try:
                client.upload_file(
                    str(path), self.bucket, key, ExtraArgs={"Metadata": {"sha256": digest.hexdigest()}}
                )
            except (BotoCoreError, ClientError) as exc:
                raise StepFailed(
                    f"artifact {rel!r}: cannot upload to s3://{self.bucket}/{key}: {exc}"
                ) from None
            except Exception as exc:  # boto3's transfer manager wraps some errors in its own types
                raise StepFailed(
                    f"artifact {rel!r}: cannot upload to s3://{self.bucket}/{key}: {type(exc).__name__}: {exc}"
                ) from None
            listing.append(
                {"path": rel, "uri": f"s3://{self.bucket}/{key}", "bytes": size, "sha256": digest.hexdigest()}
            )
        return listing
