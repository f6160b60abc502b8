"""``python``: calls ``config.function`` ("package.module:function") in a separate worker process.

The function gets ONE argument, the step's resolved params as a dict (``secret`` params resolved): ``def fn(params: dict) -> dict |
None`` (``async def`` works too). What it returns (a JSON object, or None for no outputs) becomes the
step's outputs. It runs in ``python -m legato.executor.python_worker``, one process per attempt in its own
process group, so a crash (segfault, ``os._exit``), ``sys.exit`` or a hang cannot hurt the executor;
timeout and cancel kill the group. The worker imports from the executor's cwd and ``PYTHONPATH``;
its environment is the minimal one of ``legato.executor.step_env``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import msgspec

from legato.executor.outputs_file import OUTPUTS_LIMIT
from legato.executor.process import describe_exit, run_in_process_group
from legato.executor.secret_store import ResolvedSecrets, SecretStore
from legato.executor.step_env import shield_executor_process, step_environment
from legato.executor.step_runner import StepContext, StepFailed, StepResult, parse_config
from legato.executor.workspace import attempt_workspace
from legato.protocol.messages import JSONValue

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
FUNCTION_SPEC = re.compile(rf"^{_NAME}(\.{_NAME})*:{_NAME}(\.{_NAME})*$")
WORKER_MODULE = "legato.executor.python_worker"


class PythonConfig(msgspec.Struct, frozen=True):
    """A ``python`` step's config: the ``package.module:function`` to call."""

    function: str


class WorkerReport(msgspec.Struct, frozen=True):
    """What the worker process writes to its result file: outputs, or the error."""

    ok: bool
    outputs: dict[str, JSONValue] = {}
    error: str = ""


_REPORT = msgspec.json.Decoder(WorkerReport)


class PythonRunner:
    """Runs a ``python`` step in its own worker process, under the step guard."""

    step_type = "python"

    def __init__(self, secrets: SecretStore | None = None) -> None:
        self.secrets = secrets

    async def run(self, ctx: StepContext) -> StepResult:
        config = parse_config(ctx.item.config, PythonConfig)
        shield_executor_process()  # before any step of ours runs next to us
        if not FUNCTION_SPEC.match(config.function):
            raise StepFailed(f"config.function: expected 'package.module:function', got {config.function!r}")
        store = self.secrets or SecretStore.from_environment()
        secrets = store.resolve(ctx.item.params)
        if secrets.values:
            ctx.output.redact = lambda text, cut: secrets.mask_tail(text) if cut else secrets.mask(text)
        call = json.dumps({"function": config.function, "params": secrets.reveal(ctx.item.params)}).encode()
        async with attempt_workspace(ctx.item) as ws:
            env = step_environment(ctx.item, ws.root, secrets=secrets)
            env["PYTHONPATH"] = worker_pythonpath(os.environ.get("PYTHONPATH"))
            code = await run_in_process_group(
                [sys.executable, "-m", WORKER_MODULE, str(ws.result_path)],
                cwd=ws.cwd,
                env=env,
                output=ctx.output,
                kill_grace=ctx.kill_grace,
                lease=ctx.lease,
                stdin=call,
            )
            report = read_report(ws.result_path)
        if secrets.values:
            report = _masked(report, secrets)
        if report is None:
            raise StepFailed(
                f"python worker ended before reporting a result ({describe_exit(code, ctx.output.stderr_tail())})",
                exit_code=code,
            )
        if not report.ok:
            raise StepFailed(report.error)
        if code != 0:
            raise StepFailed(
                f"python worker failed after the function returned ({describe_exit(code)})", exit_code=code
            )
        return StepResult(outputs=report.outputs)


def _masked(report: WorkerReport | None, secrets: ResolvedSecrets) -> WorkerReport | None:
    if report is None:
        return None
    outputs = secrets.mask_outputs(report.outputs)
    return WorkerReport(ok=report.ok, outputs=outputs, error=secrets.mask(report.error))


def worker_pythonpath(existing: str | None) -> str:
    """The executor's cwd first, then what ``PYTHONPATH`` already says (the worker runs elsewhere)."""
    parts = [os.getcwd(), *(p for p in (existing or "").split(os.pathsep) if p)]
    return os.pathsep.join(dict.fromkeys(parts))


def read_report(path: Path) -> WorkerReport | None:
    """The worker's report from its result file; None when it wrote none (it died first)."""
    try:
        with path.open("rb") as f:
            data = f.read(OUTPUTS_LIMIT + 4096)
    except FileNotFoundError:
        return None
    if len(data) > OUTPUTS_LIMIT + 4095:
        raise StepFailed(f"function returned outputs larger than {OUTPUTS_LIMIT // 1024} KiB")
    try:
        return _REPORT.decode(data)
    except msgspec.DecodeError as exc:
        raise StepFailed(f"python worker wrote an unreadable report: {exc}") from None
