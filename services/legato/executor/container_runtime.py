"""The container runtime CLI an executor runs ``container`` steps with, and the argv it builds.

Chosen by executor configuration (environment variables of the executor process):

- ``LEGATO_CONTAINER_RUNTIME``: ``podman``, ``docker`` or a path to either CLI (default: the first of
  ``podman``, ``docker`` found on ``PATH``);
- ``LEGATO_CONTAINER_EXTRA_ARGS``: options added to every ``run`` (split like a shell would, never run
  by one), e.g. ``--ulimit nofile=1024:1024 --ulimit nproc=1024:1024`` where the runtime cannot raise
  rlimits, or ``--network none``;
- ``LEGATO_CONTAINER_MOUNT_ROOTS``: host folders (separated by ``:``) under which a step's ``mounts``
  may lie; none by default, so a definition cannot mount the executor's disk unless the operator says.

The argv is a list (no shell): a value of the step's ``command`` is one argument whatever it holds, and
environment values are never in the argv at all: they go through a 0600 ``--env-file`` in the
attempt's private folder, or (a value with a line break, which an env file cannot hold) as
``--env NAME`` inherited from the runtime client's own environment.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from legato.executor.step_runner import StepFailed
from legato.protocol.messages import JSONValue

RUNTIME_VAR = "LEGATO_CONTAINER_RUNTIME"
EXTRA_ARGS_VAR = "LEGATO_CONTAINER_EXTRA_ARGS"
MOUNT_ROOTS_VAR = "LEGATO_CONTAINER_MOUNT_ROOTS"
RUNTIMES = ("podman", "docker")
# Every step container carries it (its attempt's id): what the stale-container sweep may remove.
ATTEMPT_LABEL = "legato.attempt_id"
WORK_TARGET = "/legato/work"
"""Where the attempt's folder is mounted in the container (its artifacts and outputs file)."""
OUTPUTS_NAME = ".legato-outputs"
# Variables the runtime client itself reads: passed from the executor to the client, never overridden
# by a step's inherited ``--env NAME`` (such a value goes through the env file instead).
_CLIENT_VARS = ("PATH", "HOME", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "TMPDIR")
_CLIENT_PREFIXES = ("CONTAINERS_", "DOCKER_", "PODMAN_", "REGISTRY_AUTH_FILE", "BUILDAH_", "STORAGE_")


class ContainerMountConfig(msgspec.Struct, frozen=True):
    """One bind mount of a step: a host path under an allowed root, a container path, read-only or not."""

    source: str
    target: str
    read_only: bool = True


class ContainerConfig(msgspec.Struct, frozen=True):
    """A ``container`` step's config as the executor receives it (rendered by the scheduler)."""

    image: str
    command: list[str] = []
    env: dict[str, JSONValue] = {}
    """Text values, or a secret's reference (``{"$secret": name}``) that the runner resolves."""
    mounts: list[ContainerMountConfig] = []
    workdir: str | None = None
    pull: str = "missing"
    artifacts: list[str] = []


def _env_name_ok(name: str) -> bool:
    return bool(name) and (name[0].isalpha() or name[0] == "_") and all(c.isalnum() or c == "_" for c in name)


@dataclass(frozen=True)
class ContainerRuntime:
    """The CLI (``podman`` or ``docker``) and the operator's options for every container step."""

    cli: str | None
    extra_args: tuple[str, ...] = ()
    mount_roots: tuple[Path, ...] = ()
    client_env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> ContainerRuntime:
        """The runtime this executor's environment configures (``LEGATO_CONTAINER_*``)."""
        env = os.environ if environ is None else environ
        wanted = env.get(RUNTIME_VAR, "").strip()
        path = env.get("PATH")
        if wanted:
            cli = shutil.which(wanted, path=path)
            if cli is None:
                raise StepFailed(f"{RUNTIME_VAR}={wanted!r}: no such container runtime CLI on this executor")
        else:
            cli = next((found for name in RUNTIMES if (found := shutil.which(name, path=path))), None)
        try:
            extra = tuple(shlex.split(env.get(EXTRA_ARGS_VAR, "")))
        except ValueError as exc:
            raise StepFailed(f"{EXTRA_ARGS_VAR} cannot be split into arguments: {exc}") from None
        roots = tuple(Path(p).resolve() for p in env.get(MOUNT_ROOTS_VAR, "").split(":") if p.strip())
        client = {
            name: value
            for name, value in env.items()
            if name in _CLIENT_VARS or name.startswith(_CLIENT_PREFIXES) or name in ("LANG", "LC_ALL", "TZ")
        }
        return cls(cli, extra, roots, client)

    @property
    def name(self) -> str:
        """``podman`` or ``docker`` (the CLI's file name)."""
        return Path(self.cli).name if self.cli else "none"

    def require(self) -> str:
        """The CLI's path; the step fails naming the setting when this executor has none."""
        if self.cli is None:
            raise StepFailed(
                f"no container runtime on this executor: install podman or docker, or set {RUNTIME_VAR}"
            )
        return self.cli

    def check_mount(self, mount: ContainerMountConfig, path: str) -> Path:
        """The mount's resolved host path, if it lies under an allowed root; else the step fails."""
        if not mount.source.startswith("/") or not mount.target.startswith("/"):
            raise StepFailed(f"{path}: source and target must be absolute paths")
        for part in (mount.source, mount.target):
            if "," in part or "\n" in part or "\0" in part:
                raise StepFailed(f"{path}: a mount path must not contain a comma or a line break")
        source = Path(mount.source).resolve()
        if not any(source == root or source.is_relative_to(root) for root in self.mount_roots):
            allowed = ":".join(str(r) for r in self.mount_roots) or "none"
            raise StepFailed(
                f"{path}.source: {mount.source} is not under a mount root this executor allows "
                f"({MOUNT_ROOTS_VAR}: {allowed})"
            )
        if not source.exists():
            raise StepFailed(f"{path}.source: {mount.source} does not exist on this executor")
        return source

    def run_argv(
        self,
        config: ContainerConfig,
        *,
        name: str,
        env_file: Path | None,
        inherited_env: Sequence[str],
        work_dir: Path,
        labels: Mapping[str, str],
    ) -> list[str]:
        """``<cli> run --rm --name ... <image> <command...>``: every value one argument, no env value."""
        cli = self.require()
        if not config.image or config.image.startswith("-"):
            raise StepFailed(f"config.image: not an image reference: {config.image!r}")
        if config.pull not in ("missing", "never", "always"):
            raise StepFailed(f"config.pull: must be one of missing, never, always, got {config.pull!r}")
        argv = [cli, "run", "--rm", "--name", name, f"--pull={config.pull}"]
        for key, value in labels.items():
            argv += ["--label", f"{key}={value}"]
        if env_file is not None:
            argv += ["--env-file", str(env_file)]
        for var in inherited_env:
            argv += ["--env", var]
        argv += ["--mount", f"type=bind,source={work_dir},target={WORK_TARGET}"]
        for i, mount in enumerate(config.mounts):
            source = self.check_mount(mount, f"config.mounts[{i}]")
            spec = f"type=bind,source={source},target={mount.target}"
            argv += ["--mount", spec + (",readonly" if mount.read_only else "")]
        if config.workdir is not None:
            argv += ["--workdir", config.workdir]
        argv += [*self.extra_args, config.image, *config.command]
        return argv

    def prune_argv(self, older_than: float) -> list[str]:
        """Remove the step containers (``ATTEMPT_LABEL``) that are not running and were created more
        than ``older_than`` seconds ago; running ones, and every other container, are left alone."""
        return [
            self.require(),
            "container",
            "prune",
            "--force",
            "--filter",
            f"label={ATTEMPT_LABEL}",
            "--filter",
            f"until={max(1, int(older_than))}s",
        ]

    def remove_argv(self, name: str) -> list[str]:
        """Kill and remove the container ``name`` (no error if it is already gone)."""
        if self.name == "podman":
            return [self.require(), "rm", "--force", "--ignore", "--time", "0", name]
        return [self.require(), "rm", "--force", name]


def split_env(
    values: Mapping[str, str], client_env: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """The container's variables as (for the env file, inherited by ``--env NAME``).

    An env file holds one ``NAME=value`` per line, so a value with a line break is inherited from the
    client's environment instead; one whose name the client itself reads (``PATH``, ``DOCKER_HOST``...)
    cannot be, and fails the step.
    """
    in_file: dict[str, str] = {}
    inherited: dict[str, str] = {}
    for name, value in values.items():
        if not _env_name_ok(name):
            raise StepFailed(f"config.env.{name}: not a variable name")
        if "\0" in value:
            raise StepFailed(f"config.env.{name}: the value contains a NUL byte")
        if "\n" not in value and "\r" not in value:
            in_file[name] = value
        elif name in client_env or name in _CLIENT_VARS or name.startswith(_CLIENT_PREFIXES):
            raise StepFailed(
                f"config.env.{name}: a value with a line break cannot be passed in a variable the "
                "container runtime client reads itself"
            )
        else:
            inherited[name] = value
    return in_file, inherited


def write_env_file(path: Path, values: Mapping[str, str]) -> Path:
    """``NAME=value`` lines in a new file only this user can read (created 0600, never widened)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        for name, value in values.items():
            out.write(f"{name}={value}\n")
    return path
