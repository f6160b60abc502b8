"""``notebook``: executes a Jupyter notebook with the step's params injected, in its own process.

``config``: ``notebook`` (an ``.ipynb`` path on the executor: absolute, or relative to its working
directory) and ``kernel`` (``python3``). The notebook is copied into the attempt's folder and run by
``python -m legato.executor.nbrunner`` (nbclient) in a process group, like a shell step: the step's
timeout, a cancel or a shutdown kill it with its kernel. The params (secrets resolved) become a cell of
assignments after the cell tagged ``parameters``. The executed notebook is kept as an artifact
(``legato.executor.artifacts``) and its URI is the ``notebook`` output, also when a cell failed; a
failing cell fails the step with its number and error (``cell 3 failed: ZeroDivisionError: ...``).
Needs ``nbclient`` and ``ipykernel`` where the executor runs (the ``notebook`` extra).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import msgspec

from legato.executor.artifacts import ArtifactStore
from legato.executor.process import describe_exit, run_in_process_group
from legato.executor.secret_store import SecretStore
from legato.executor.step_env import shield_executor_process, step_environment
from legato.executor.step_runner import StepContext, StepFailed, StepResult, parse_config
from legato.executor.workspace import attempt_workspace
from legato.protocol.messages import JSONValue

WORKER_MODULE = "legato.executor.nbrunner"
EXECUTED = "executed.ipynb"


class NotebookConfig(msgspec.Struct, frozen=True):
    """A notebook step's config: the notebook file and the kernel to run it with."""

    notebook: str
    kernel: str = "python3"


class NotebookReport(msgspec.Struct, frozen=True):
    """What the worker process reports: success, or the failing cell and its error."""

    ok: bool
    error: str = ""
    cell: int | None = None


class NotebookRunner:
    """Runs ``notebook`` steps in a worker process (``nbrunner``) in the step's process group."""

    step_type = "notebook"

    def __init__(self, secrets: SecretStore | None = None, artifacts: ArtifactStore | None = None) -> None:
        self.secrets = secrets
        self.artifacts = artifacts

    async def run(self, ctx: StepContext) -> StepResult:
        config = parse_config(ctx.item.config, NotebookConfig)
        shield_executor_process()
        source = Path(config.notebook)
        if not source.is_file():
            raise StepFailed(f"config.notebook: no such notebook on this executor: {config.notebook!r}")
        secrets = (self.secrets or SecretStore.from_environment()).resolve(ctx.item.params)
        if secrets.values:
            ctx.output.redact = lambda text, cut: secrets.mask_tail(text) if cut else secrets.mask(text)
        call = json.dumps({"params": secrets.reveal(ctx.item.params), "kernel": config.kernel}).encode()
        store = self.artifacts or ArtifactStore.from_environment()
        async with attempt_workspace(ctx.item) as ws:
            given = ws.root / "given.ipynb"
            await asyncio.to_thread(shutil.copyfile, source, given)
            report_path = ws.root / "notebook-report.json"
            env = step_environment(ctx.item, ws.root, secrets=secrets)
            # Jupyter's runtime files (kernel connection files) and IPython's profile stay in the folder.
            env.update({"HOME": str(ws.root), "JUPYTER_RUNTIME_DIR": str(ws.root / "jupyter")})
            code = await run_in_process_group(
                [sys.executable, "-m", WORKER_MODULE, str(given), str(ws.cwd / EXECUTED), str(report_path)],
                cwd=ws.cwd,
                env=env,
                output=ctx.output,
                kill_grace=ctx.kill_grace,
                lease=ctx.lease,
                stdin=call,
            )
            report = _read_report(report_path)
            outputs: dict[str, JSONValue] = {}
            if store.configured and (ws.cwd / EXECUTED).is_file():
                kept = await asyncio.to_thread(store.keep, ctx.item, ws.cwd, [EXECUTED])
                outputs = {
                    "notebook": kept[0]["uri"] if isinstance(kept[0], dict) else None,
                    "artifacts": kept,
                }
        if report is None:
            raise StepFailed(
                f"notebook worker ended before reporting ({describe_exit(code, ctx.output.stderr_tail())})",
                exit_code=code,
            )
        outputs = secrets.mask_outputs(outputs)
        if not report.ok:
            raise StepFailed(secrets.mask(report.error), outputs=outputs)
        return StepResult(outputs=outputs)


def _read_report(path: Path) -> NotebookReport | None:
    try:
        return msgspec.json.decode(path.read_bytes(), type=NotebookReport)
    except FileNotFoundError:
        return None
    except msgspec.DecodeError as exc:
        raise StepFailed(f"notebook worker wrote an unreadable report: {exc}") from None
