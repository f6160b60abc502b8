"""``shell``: ``config.command`` run by ``/bin/sh -c`` in a fresh folder and process group.

Files the step declares in ``artifacts`` (paths or globs in its folder) are copied to the executor's
artifact store after the command exits, whatever its exit code, and listed in the outputs
(``artifacts``; see ``legato.executor.artifacts``).

The command was rendered by the scheduler with every ``${…}`` value shell-quoted (see
``legato.core.shell_command``); a ``secret`` param appears in it only as ``"${LEGATO_SECRET_<NAME>}"``.
The process sees the minimal environment of ``legato.executor.step_env`` plus ``config.env`` (the
step's declared ``env:``; a secret there is resolved here). A command too long for one argument is
run from a file instead. Exit code 0 succeeds; anything else fails with the exit code and the tail of
stderr. Secret values are masked in the output, error and outputs the step reports.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec

from legato.executor.artifacts import ArtifactStore
from legato.executor.outputs_file import read_outputs_file
from legato.executor.process import describe_exit, run_in_process_group
from legato.executor.secret_store import SecretStore
from legato.executor.step_env import shield_executor_process, step_environment
from legato.executor.step_runner import StepContext, StepFailed, StepResult, parse_config
from legato.executor.workspace import attempt_workspace
from legato.protocol.messages import JSONValue

SHELL = "/bin/sh"
# Linux refuses one argument over 128 KiB; longer commands are read by the shell from a file.
COMMAND_ARG_LIMIT = 64 * 1024


class ShellConfig(msgspec.Struct, frozen=True):
    """A ``shell`` step's config: the command and extra environment variables."""

    command: str
    env: dict[str, JSONValue] = {}
    artifacts: list[str] = []


class ShellRunner:
    """Runs a ``shell`` step as a process under the step guard, capturing its output."""

    step_type = "shell"

    def __init__(self, secrets: SecretStore | None = None, artifacts: ArtifactStore | None = None) -> None:
        self.secrets = secrets
        self.artifacts = artifacts

    async def run(self, ctx: StepContext) -> StepResult:
        config = parse_config(ctx.item.config, ShellConfig)
        shield_executor_process()  # before any step of ours runs next to us
        if "\0" in config.command:
            raise StepFailed("config.command contains a NUL byte (a value substituted into it held one)")
        store = self.secrets or SecretStore.from_environment()
        secrets = store.resolve(ctx.item.params, config.env)
        if secrets.values:
            ctx.output.redact = lambda text, cut: secrets.mask_tail(text) if cut else secrets.mask(text)
        declared = {name: _env_text(secrets.reveal(value)) for name, value in config.env.items()}
        try:
            async with attempt_workspace(ctx.item) as ws:
                env = step_environment(
                    ctx.item, ws.root, secrets=secrets, outputs_path=ws.outputs_path, declared=declared
                )
                argv = [SHELL, "-c", config.command]
                if len(config.command.encode()) > COMMAND_ARG_LIMIT:
                    script = ws.root / "command.sh"
                    script.write_text(config.command)
                    argv = [SHELL, str(script)]
                code = await run_in_process_group(
                    argv,
                    cwd=ws.cwd,
                    env=env,
                    output=ctx.output,
                    kill_grace=ctx.kill_grace,
                    lease=ctx.lease,
                )
                kept = await self._keep_artifacts(ctx, ws.cwd, config.artifacts, required=code == 0)
                if code != 0:
                    raise StepFailed(
                        describe_exit(code, ctx.output.stderr_tail()),
                        exit_code=code,
                        outputs={"artifacts": kept} if kept else None,
                    )
                outputs = read_outputs_file(ws.outputs_path)
                if config.artifacts:
                    outputs["artifacts"] = kept
        except StepFailed as exc:
            if not secrets.values:
                raise
            raise secrets.mask_failure(exc) from None
        return StepResult(outputs=secrets.mask_outputs(outputs), exit_code=0)

    async def _keep_artifacts(
        self, ctx: StepContext, folder: Path, patterns: list[str], *, required: bool
    ) -> list[JSONValue]:
        """The declared files copied to the artifact store, also after a failure (they help debug it);
        then a missing one does not hide the step's own error."""
        if not patterns:
            return []
        store = self.artifacts or ArtifactStore.from_environment()
        try:
            return await asyncio.to_thread(store.keep, ctx.item, folder, patterns, required=required)
        except StepFailed:
            if required:
                raise
            return []


def _env_text(value: JSONValue) -> str:
    return value if isinstance(value, str) else msgspec.json.encode(value).decode()
