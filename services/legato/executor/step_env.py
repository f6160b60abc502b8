"""The environment a step's processes see: minimal and declared, never the executor's own.

A step gets only:

- ``PATH`` (the executor's, or a standard one), ``HOME``, ``LANG``/``LC_ALL``/``TZ`` when the executor
  has them, and ``TMPDIR`` (a folder inside the attempt's workspace);
- the variables the operator lists in the executor's ``LEGATO_STEP_ENV_PASSTHROUGH`` (comma separated;
  names starting with ``LEGATO_`` are never passed);
- its own ``LEGATO_*`` variables: ``LEGATO_PARAM_<NAME>`` per param (strings as they are, other values
  as JSON), ``LEGATO_PARAMS_FILE`` (all params as a JSON file), ``LEGATO_PARAMS`` (the same JSON, when
  it is at most ``ENV_VALUE_LIMIT`` bytes), ``LEGATO_OUTPUTS``, the attempt's identity, and
  ``LEGATO_SECRET_<NAME>`` for the secrets its params or ``env`` reference;
- the ``env:`` its definition declares.

So the executor's database URL, NATS credentials or cloud keys never reach a step; and the executor
makes itself non-dumpable (``shield_executor_process``) so a step cannot read them from
``/proc/<executor pid>/environ`` either. A param larger than
``ENV_VALUE_LIMIT`` bytes is not put in a variable (Linux refuses a variable over 128 KiB, and all of
them together over a few MiB: "Argument list too long"): the step reads ``LEGATO_PARAM_<NAME>_FILE``.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from legato.executor.secret_store import ResolvedSecrets
from legato.executor.step_runner import StepFailed
from legato.protocol.messages import JSONValue, WorkItem

ENV_VALUE_LIMIT = 32 * 1024  # bytes: bigger values go through files
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
PASSTHROUGH_VAR = "LEGATO_STEP_ENV_PASSTHROUGH"
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")


_PR_SET_DUMPABLE = 4


def shield_executor_process() -> None:
    """Make this process's ``/proc/<pid>/environ`` (and memory) unreadable to its steps.

    Steps run as the executor's user, who may read any of its own processes' ``/proc`` files: a
    non-dumpable process's are owned by root instead. Idempotent; a no-op where prctl is missing.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def param_env_name(name: str) -> str:
    """``LEGATO_PARAM_<NAME>``: upper-cased, characters an env name cannot hold become ``_``."""
    return "LEGATO_PARAM_" + re.sub(r"[^A-Z0-9_]", "_", name.upper())


def env_value(value: JSONValue) -> str:
    """Strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def base_environment(executor_env: Mapping[str, str]) -> dict[str, str]:
    """What a step inherits from the executor: a few harmless variables and the operator's list."""
    env = {name: executor_env[name] for name in _INHERITED if name in executor_env}
    env.setdefault("PATH", DEFAULT_PATH)
    passthrough = executor_env.get(PASSTHROUGH_VAR, "")
    for name in (n.strip() for n in passthrough.split(",")):
        if name and not name.startswith("LEGATO_") and name in executor_env:
            env[name] = executor_env[name]
    return env


def step_environment(
    item: WorkItem,
    root: Path,
    *,
    secrets: ResolvedSecrets | None = None,
    outputs_path: Path | None = None,
    declared: Mapping[str, str] | None = None,
    executor_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The whole environment of one attempt's processes; param files are written under ``root``.

    ``declared`` is the step's own ``env:`` (secret references already resolved); it may set any
    variable except the ``LEGATO_*`` ones Legato sets.
    """
    secrets = secrets or ResolvedSecrets()
    env = base_environment(os.environ if executor_env is None else executor_env)
    tmp = root / "tmp"
    tmp.mkdir(exist_ok=True)
    env["TMPDIR"] = str(tmp)
    env.update(declared or {})
    params = secrets.reveal(item.params)
    files = root / "params"
    files.mkdir(exist_ok=True)
    for index, (name, value) in enumerate(params.items()):
        var = param_env_name(name)
        text = env_value(value)
        if len(text.encode()) <= ENV_VALUE_LIMIT:
            env[var] = text
        else:
            path = files / f"{index}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)[:60]}"
            path.write_text(text)
            env[f"{var}_FILE"] = str(path)
    params_json = json.dumps(params, separators=(",", ":"))
    params_file = root / "params.json"
    params_file.write_text(params_json)
    env["LEGATO_PARAMS_FILE"] = str(params_file)
    if len(params_json.encode()) <= ENV_VALUE_LIMIT:
        env["LEGATO_PARAMS"] = params_json
    env.update(secrets.environment())
    env["LEGATO_WORKFLOW_ID"] = item.workflow_id
    env["LEGATO_INSTANCE_ID"] = item.instance_id
    env["LEGATO_RUN_ID"] = item.instance_id  # the same id by its user-facing name
    env["LEGATO_STEP_ID"] = item.step_id
    env["LEGATO_ATTEMPT"] = str(item.attempt)
    env["LEGATO_ATTEMPT_ID"] = item.attempt_id
    if outputs_path is not None:
        env["LEGATO_OUTPUTS"] = str(outputs_path)
    for key, value in env.items():
        if "\0" in value or "\0" in key:
            raise StepFailed(f"environment variable {key} would contain a NUL byte; params cannot carry one")
    return env
