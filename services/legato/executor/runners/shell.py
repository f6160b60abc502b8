"""``shell``: ``config.command`` run by ``/bin/sh -c`` in a fresh folder and process group.

The command sees the executor's environment plus ``LEGATO_PARAM_<NAME>`` per param (strings as they
are, other values as JSON), ``LEGATO_PARAMS`` (all params as JSON), ``LEGATO_OUTPUTS`` (a file it may
write outputs to: a JSON object or ``key=value`` lines) and the attempt's identity
(``LEGATO_WORKFLOW_ID``, ``LEGATO_INSTANCE_ID``, ``LEGATO_STEP_ID``, ``LEGATO_ATTEMPT``). Exit code 0
succeeds; anything else fails with the exit code and the tail of stderr.
"""

from __future__ import annotations

import msgspec

from legato.executor.outputs_file import read_outputs_file
from legato.executor.process import describe_exit, run_in_process_group
from legato.executor.step import StepContext, StepFailed, StepResult, parse_config
from legato.executor.workspace import attempt_workspace, step_environment

SHELL = "/bin/sh"


class ShellConfig(msgspec.Struct, frozen=True):
    command: str


class ShellRunner:
    step_type = "shell"

    async def run(self, ctx: StepContext) -> StepResult:
        config = parse_config(ctx.item.config, ShellConfig)
        async with attempt_workspace(ctx.item) as ws:
            env = step_environment(ctx.item, outputs_path=ws.outputs_path)
            code = await run_in_process_group(
                [SHELL, "-c", config.command],
                cwd=ws.cwd,
                env=env,
                output=ctx.output,
                kill_grace=ctx.kill_grace,
            )
            if code != 0:
                raise StepFailed(describe_exit(code, ctx.output.stderr_tail()), exit_code=code)
            return StepResult(outputs=read_outputs_file(ws.outputs_path), exit_code=0)
