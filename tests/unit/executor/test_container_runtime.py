"""The container runner's argv and environment: every value one argument, env values never in the argv,
the env file private, mounts only under the operator's roots, the runtime chosen by configuration."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from legato.executor.container_runtime import (
    ContainerConfig,
    ContainerMountConfig,
    ContainerRuntime,
    split_env,
    write_env_file,
)
from legato.executor.step_runner import StepFailed


def fake_cli(folder: Path, name: str) -> Path:
    """An executable file named like a runtime CLI, so ``shutil.which`` finds it (it is never run)."""
    path = folder / name
    path.write_text("#!/bin/sh\nexit 99\n")
    path.chmod(0o755)
    return path


def test_the_runtime_is_chosen_by_configuration(tmp_path: Path) -> None:
    fake_cli(tmp_path, "podman")
    fake_cli(tmp_path, "docker")
    path = str(tmp_path)
    assert ContainerRuntime.from_environment({"PATH": path}).name == "podman"
    chosen = ContainerRuntime.from_environment(
        {
            "PATH": path,
            "LEGATO_CONTAINER_RUNTIME": "docker",
            "LEGATO_CONTAINER_EXTRA_ARGS": "--ulimit nofile=1024:1024 --network 'none'",
            "LEGATO_CONTAINER_MOUNT_ROOTS": f"{tmp_path}/data:/srv",
            "DOCKER_HOST": "unix:///run/d.sock",
            "LEGATO_NATS_URL": "nats://secret@host",
            "AWS_SECRET_ACCESS_KEY": "k",
        }
    )
    assert chosen.cli == str(tmp_path / "docker")
    assert chosen.extra_args == ("--ulimit", "nofile=1024:1024", "--network", "none")
    assert chosen.mount_roots == ((tmp_path / "data").resolve(), Path("/srv"))
    # The client gets what it needs to reach its daemon, not the executor's own secrets.
    assert chosen.client_env == {"PATH": path, "DOCKER_HOST": "unix:///run/d.sock"}
    with pytest.raises(StepFailed, match="LEGATO_CONTAINER_RUNTIME='nerdctl': no such container runtime"):
        ContainerRuntime.from_environment({"PATH": path, "LEGATO_CONTAINER_RUNTIME": "nerdctl"})
    with pytest.raises(StepFailed, match="no container runtime on this executor"):
        ContainerRuntime.from_environment({"PATH": str(tmp_path / "empty")}).require()


def test_the_argv_holds_values_as_single_arguments_and_no_env_value(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    runtime = ContainerRuntime(
        cli="/usr/bin/podman", extra_args=("--ulimit", "nproc=1024:1024"), mount_roots=(tmp_path,)
    )
    config = ContainerConfig(
        image="localhost/tool:1",
        command=["/bin/sh", "-c", 'echo "$1"; rm -rf /', "x", "a b; $(reboot)"],
        env={"TOKEN": "s3cr3t"},
        mounts=[ContainerMountConfig(source=str(data), target="/data", read_only=True)],
        workdir="/data",
        pull="never",
    )
    argv = runtime.run_argv(
        config,
        name="legato-a1-abc",
        env_file=tmp_path / "container.env",
        inherited_env=["MULTI"],
        work_dir=tmp_path / "work",
        labels={"legato.attempt_id": "a1"},
    )
    assert argv == [
        "/usr/bin/podman",
        "run",
        "--rm",
        "--name",
        "legato-a1-abc",
        "--pull=never",
        "--label",
        "legato.attempt_id=a1",
        "--env-file",
        str(tmp_path / "container.env"),
        "--env",
        "MULTI",
        "--mount",
        f"type=bind,source={tmp_path / 'work'},target=/legato/work",
        "--mount",
        f"type=bind,source={data.resolve()},target=/data,readonly",
        "--workdir",
        "/data",
        "--ulimit",
        "nproc=1024:1024",
        "localhost/tool:1",
        "/bin/sh",
        "-c",
        'echo "$1"; rm -rf /',
        "x",
        "a b; $(reboot)",
    ]
    assert not any("s3cr3t" in arg for arg in argv)
    assert runtime.remove_argv("n") == ["/usr/bin/podman", "rm", "--force", "--ignore", "--time", "0", "n"]
    docker = ContainerRuntime(cli="/usr/bin/docker")
    assert docker.remove_argv("n") == ["/usr/bin/docker", "rm", "--force", "n"]
    # The sweep: only step containers (their label), only those older than its age (whole seconds).
    assert docker.prune_argv(600.0) == [
        "/usr/bin/docker",
        "container",
        "prune",
        "--force",
        "--filter",
        "label=legato.attempt_id",
        "--filter",
        "until=600s",
    ]
    assert runtime.prune_argv(0.2)[-1] == "until=1s"


@pytest.mark.parametrize(
    ("config", "error"),
    [
        (ContainerConfig(image="-v"), "config.image: not an image reference: '-v'"),
        (ContainerConfig(image="x", pull="sometimes"), "config.pull: must be one of missing, never, always"),
        (
            ContainerConfig(image="x", mounts=[ContainerMountConfig(source="/etc", target="/e")]),
            "config.mounts[0].source: /etc is not under a mount root this executor allows "
            "(LEGATO_CONTAINER_MOUNT_ROOTS: @ROOT@)",
        ),
        (
            ContainerConfig(image="x", mounts=[ContainerMountConfig(source="@ROOT@/../../etc", target="/e")]),
            "is not under a mount root this executor allows",
        ),
        (
            ContainerConfig(image="x", mounts=[ContainerMountConfig(source="@ROOT@/missing", target="/e")]),
            "config.mounts[0].source: @ROOT@/missing does not exist on this executor",
        ),
        (
            ContainerConfig(image="x", mounts=[ContainerMountConfig(source="@ROOT@", target="/e,rw")]),
            "config.mounts[0]: a mount path must not contain a comma",
        ),
    ],
)
def test_bad_configs_fail_naming_the_field(tmp_path: Path, config: ContainerConfig, error: str) -> None:
    root = str(tmp_path)
    mounts = [
        ContainerMountConfig(m.source.replace("@ROOT@", root), m.target, m.read_only) for m in config.mounts
    ]
    config = ContainerConfig(image=config.image, pull=config.pull, mounts=mounts)
    runtime = ContainerRuntime(cli="/usr/bin/podman", mount_roots=(tmp_path,))
    with pytest.raises(StepFailed) as failed:
        runtime.run_argv(config, name="n", env_file=None, inherited_env=[], work_dir=tmp_path, labels={})
    assert error.replace("@ROOT@", root) in failed.value.error


def test_without_mount_roots_no_host_path_may_be_mounted(tmp_path: Path) -> None:
    config = ContainerConfig(image="x", mounts=[ContainerMountConfig(source=str(tmp_path), target="/d")])
    with pytest.raises(StepFailed, match=r"LEGATO_CONTAINER_MOUNT_ROOTS: none\)"):
        ContainerRuntime(cli="/usr/bin/podman").run_argv(
            config, name="n", env_file=None, inherited_env=[], work_dir=tmp_path, labels={}
        )


def test_env_values_go_to_a_private_file_or_are_inherited(tmp_path: Path) -> None:
    in_file, inherited = split_env(
        {"A": "one two ", "PATH": "/opt/bin", "MULTI": "l1\nl2", "EQ": "a=b"}, {"PATH": "/usr/bin"}
    )
    assert in_file == {"A": "one two ", "PATH": "/opt/bin", "EQ": "a=b"}
    assert inherited == {"MULTI": "l1\nl2"}
    with pytest.raises(StepFailed, match=r"config\.env\.DOCKER_HOST: a value with a line break"):
        split_env({"DOCKER_HOST": "a\nb"}, {})
    with pytest.raises(StepFailed, match=r"config\.env\.X: the value contains a NUL byte"):
        split_env({"X": "a\0b"}, {})
    path = write_env_file(tmp_path / "c.env", in_file)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "A=one two \nPATH=/opt/bin\nEQ=a=b\n"
    with pytest.raises(FileExistsError):  # never written through a file someone placed there
        write_env_file(path, {})
