"""The worker process a ``python`` step runs in: ``python -m legato.executor.python_worker RESULT_PATH``.

Reads ``{"function": "package.module:function", "params": {...}}`` as JSON on stdin, imports the
function, calls it with ONE argument, the params dict (``fn(params)``; ``async def`` functions are run
with ``asyncio.run``), and writes ``{"ok": true, "outputs": {...}}`` or ``{"ok": false, "error": "..."}``
to RESULT_PATH. stdout and stderr belong to the function (the executor captures them); the report
never goes there. Only the standard library is imported here, and asyncio, inspect and traceback
only when a call needs them (together ~40 ms of a worker's start), so a worker starts fast.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable

TRACEBACK_TAIL = 4096


def main(argv: list[str] | None = None) -> int:
    """Run the call read from stdin and write its report to RESULT_PATH; the exit code."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m legato.executor.python_worker RESULT_PATH < call.json", file=sys.stderr)
        return 2
    report = _run_call(sys.stdin.buffer.read())
    _write_report(Path(args[0]), report)
    sys.stdout.flush()
    sys.stderr.flush()
    return 0


def _run_call(raw: bytes) -> dict[str, Any]:
    try:
        call = json.loads(raw)
        spec, params = call["function"], call["params"]
        if not isinstance(spec, str) or not isinstance(params, dict):
            raise TypeError("function must be a string and params an object")
    except (ValueError, KeyError, TypeError) as exc:
        return _failure(f"bad call from the executor: {exc}")
    module_name, _, attr_path = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # The module itself (or a package on its path) is missing: the traceback would be noise.
        where = exc if not _names_prefix_of(exc.name, module_name) else None
        return _failure(f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}", where)
    except BaseException as exc:  # an import may fail in any way, even sys.exit
        return _failure(f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}", exc)
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            return _failure(f"module {module_name!r} has no attribute {attr_path!r}")
    if not callable(target):
        return _failure(f"{spec} is a {type(target).__name__}, not a function")
    try:
        result = target(params)
        if result is not None and not isinstance(result, dict):
            import inspect

            if inspect.isawaitable(result):
                import asyncio

                result = asyncio.run(_wait_for(result))
    except SystemExit as exc:
        return _failure(f"{spec} called sys.exit({exc.code!r})")
    except BaseException as exc:  # report whatever the function raised
        return _failure(f"{type(exc).__name__}: {exc}", exc)
    if result is None:
        result = {}
    if not isinstance(result, dict):
        return _failure(f"{spec} must return a dict or None, got {type(result).__name__}")
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return _failure(f"{spec} returned outputs that are not JSON: {exc}")
    return {"ok": True, "outputs": result}


async def _wait_for(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _names_prefix_of(missing: str | None, module_name: str) -> bool:
    return missing is not None and (module_name == missing or module_name.startswith(missing + "."))


def _failure(error: str, exc: BaseException | None = None) -> dict[str, Any]:
    if exc is not None:
        import traceback

        # Skip this runner's own frame: the traceback starts in the user's code.
        tb_start = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
        tb = "".join(traceback.format_exception(type(exc), exc, tb_start))
        error = f"{error}\n{tb[-TRACEBACK_TAIL:]}"
    return {"ok": False, "error": error}


def _write_report(path: Path, report: dict[str, Any]) -> None:
    # Written aside and renamed, so the executor never reads half a report from a killed worker.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, allow_nan=False))
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
