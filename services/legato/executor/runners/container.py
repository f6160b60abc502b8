"""``container``: runs ``config.image`` with ``config.command`` through podman or docker.

The runtime and its options come from the executor's configuration (``legato.executor.container_runtime``).
The runtime client runs as a step process (its own process group, under the step guard), with stdout and
stderr captured and size-capped like a shell step's. The container gets the step's declared ``env``
(secrets resolved here, masked in what the step reports) and its identity (``LEGATO_WORKFLOW_ID``,
``LEGATO_RUN_ID``, ``LEGATO_STEP_ID``, ``LEGATO_ATTEMPT``, ``LEGATO_ATTEMPT_ID``); the attempt's folder
is mounted at ``/legato/work``: outputs written to ``$LEGATO_OUTPUTS`` (a file there) and files declared
in ``artifacts`` (relative to it) are taken from it when the container exits.

A timeout, cancel or shutdown sends SIGTERM to the client (which passes it to the container), SIGKILLs
it after the grace period, then kills and removes the container by name: nothing keeps running.
The container's exit code is the step's; the runtime's own failures (an image that does not exist:
exit code 125) fail the attempt with the runtime's message, retried per the step's retry policy.
"""

from __future__ import annotations

import asyncio
import re
import secrets as token_source
import subprocess

from legato.executor.artifacts import ArtifactStore
from legato.executor.container_runtime import (
    ATTEMPT_LABEL,
    OUTPUTS_NAME,
    WORK_TARGET,
    ContainerConfig,
    ContainerRuntime,
    split_env,
    write_env_file,
)
from legato.executor.outputs_file import read_outputs_file
from legato.executor.process import describe_exit, run_in_process_group
from legato.executor.secret_store import SecretStore
from legato.executor.step_env import env_value, shield_executor_process
from legato.executor.step_runner import StepContext, StepFailed, StepResult, parse_config
from legato.executor.workspace import Workspace, attempt_workspace
from legato.protocol.messages import JSONValue
from legato.telemetry import get_logger

log = get_logger("legato.executor")
RUNTIME_ERRORS = {
    125: "the container runtime failed",
    126: "the command cannot be run",
    127: "no such command",
}
REMOVE_TIMEOUT = 30.0  # seconds for ``rm --force`` of a stopped step's container


class ContainerRunner:
    """Runs ``container`` steps with the executor's container runtime CLI."""

    step_type = "container"

    def __init__(
        self,
        runtime: ContainerRuntime | None = None,
        secrets: SecretStore | None = None,
        artifacts: ArtifactStore | None = None,
    ) -> None:
        self.runtime = runtime
        self.secrets = secrets
        self.artifacts = artifacts

    async def run(self, ctx: StepContext) -> StepResult:
        config = parse_config(ctx.item.config, ContainerConfig)
        shield_executor_process()
        runtime = self.runtime or ContainerRuntime.from_environment()
        secrets = (self.secrets or SecretStore.from_environment()).resolve(config.env)
        if secrets.values:
            ctx.output.redact = lambda text, cut: secrets.mask_tail(text) if cut else secrets.mask(text)
        item = ctx.item
        declared = {name: env_value(secrets.reveal(value)) for name, value in config.env.items()}
        identity = {
            "LEGATO_WORKFLOW_ID": item.workflow_id,
            "LEGATO_INSTANCE_ID": item.instance_id,
            "LEGATO_RUN_ID": item.instance_id,
            "LEGATO_STEP_ID": item.step_id,
            "LEGATO_ATTEMPT": str(item.attempt),
            "LEGATO_ATTEMPT_ID": item.attempt_id,
            "LEGATO_OUTPUTS": f"{WORK_TARGET}/{OUTPUTS_NAME}",
        }
        in_file, inherited = split_env({**declared, **identity}, runtime.client_env)
        name = f"legato-{_safe(item.attempt_id)}-{token_source.token_hex(3)}"
        labels = {
            "legato.workflow_id": item.workflow_id,
            "legato.instance_id": item.instance_id,
            "legato.step_id": item.step_id,
            ATTEMPT_LABEL: item.attempt_id,
        }
        try:
            async with attempt_workspace(item) as ws:
                env_file = write_env_file(ws.root / "container.env", in_file)
                argv = runtime.run_argv(
                    config,
                    name=name,
                    env_file=env_file,
                    inherited_env=list(inherited),
                    work_dir=ws.cwd,
                    labels=labels,
                )
                try:
                    code = await run_in_process_group(
                        argv,
                        cwd=ws.cwd,
                        env={**runtime.client_env, **inherited},
                        output=ctx.output,
                        kill_grace=ctx.kill_grace,
                        lease=ctx.lease,
                    )
                except BaseException:
                    # Killing the client does not stop the container (its monitor is not our child).
                    await asyncio.shield(asyncio.to_thread(_remove, runtime, name))
                    raise
                kept = await self._keep_artifacts(ctx, ws, config.artifacts, required=code == 0)
                if code != 0:
                    what = RUNTIME_ERRORS.get(code)
                    detail = describe_exit(code, ctx.output.stderr_tail())
                    raise StepFailed(
                        f"{what} ({detail})" if what else detail,
                        exit_code=code,
                        outputs={"artifacts": kept} if kept else None,
                    )
                outputs = read_outputs_file(ws.cwd / OUTPUTS_NAME)
                if config.artifacts:
                    outputs["artifacts"] = kept
        except StepFailed as exc:
            if not secrets.values:
                raise
            raise secrets.mask_failure(exc) from None
        return StepResult(outputs=secrets.mask_outputs(outputs), exit_code=0)

    async def _keep_artifacts(
        self, ctx: StepContext, ws: Workspace, patterns: list[str], *, required: bool
    ) -> list[JSONValue]:
        """The declared files of the container's work folder, kept also after a failure."""
        if not patterns:
            return []
        store = self.artifacts or ArtifactStore.from_environment()
        try:
            return await asyncio.to_thread(store.keep, ctx.item, ws.cwd, patterns, required=required)
        except StepFailed:
            if required:
                raise
            return []


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "_.-" else "_" for c in text)[:80]


def _remove(runtime: ContainerRuntime, name: str) -> None:
    """Kill and remove the container; logged, never raised (the step's own outcome wins)."""
    try:
        done = subprocess.run(
            runtime.remove_argv(name),
            env=dict(runtime.client_env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=REMOVE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired, StepFailed) as exc:
        log.warning("container_remove_failed", container=name, error=str(exc))
        return
    if done.returncode != 0:
        log.warning(
            "container_remove_failed", container=name, error=done.stderr.decode(errors="replace")[-500:]
        )


# A step container that is not running and is older than this is left over: its executor was killed
# while the runtime client created it (podman keeps it "Created", and no monitor exists yet to remove
# it), or its monitor was killed before its cleanup ran. No step of Legato's starts that late.
STALE_CONTAINER_AGE = 600.0
SWEEP_TIMEOUT = 60.0
# The first sweep a while after the executor starts (not on every start of a short-lived one), then this
# often.
SWEEP_FIRST = 30.0
SWEEP_EVERY = 900.0
_CONTAINER_ID = re.compile(r"^[0-9a-f]{64}$", re.MULTILINE)


async def sweep_stale_containers(runtime: ContainerRuntime, older_than: float) -> int:
    """Remove the step containers left over (not running, created more than ``older_than`` seconds ago)
    by any executor of this host; returns how many. A failure is logged, never raised: a sweep that
    fails is tried again at the next."""
    argv = runtime.prune_argv(older_than)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=dict(runtime.client_env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as exc:
        log.warning("container_sweep_failed", error=str(exc))
        return 0
    try:
        async with asyncio.timeout(SWEEP_TIMEOUT):
            out, err = await proc.communicate()
    except TimeoutError:
        log.warning("container_sweep_failed", error=f"no answer within {SWEEP_TIMEOUT:g} s")
        return 0
    finally:
        if proc.returncode is None:  # timed out, or cancelled (the executor stops)
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        log.warning("container_sweep_failed", error=err.decode(errors="replace")[-500:])
        return 0
    removed = _CONTAINER_ID.findall(out.decode(errors="replace"))
    if removed:
        log.info("stale_containers_removed", count=len(removed), containers=[c[:12] for c in removed])
    return len(removed)


async def sweep_containers_while_running(runtime: ContainerRuntime) -> None:
    """``sweep_stale_containers`` ``SWEEP_FIRST`` seconds after the start, then every ``SWEEP_EVERY``;
    runs until cancelled."""
    await asyncio.sleep(SWEEP_FIRST)
    while True:
        await sweep_stale_containers(runtime, STALE_CONTAINER_AGE)
        await asyncio.sleep(SWEEP_EVERY)
