"""The worker process a ``notebook`` step runs in: ``python -m legato.executor.nbrunner IN OUT REPORT``.

Reads ``{"params": {...}, "kernel": "python3"}`` as JSON on stdin, injects the params as a cell of
assignments (``name = value``) right after the cell tagged ``parameters`` (papermill's convention) or
first when there is none, executes the notebook with nbclient (its kernel is a child of this process,
so the step's process group holds it and a timeout or cancel kills it too), writes the executed
notebook to OUT — also when a cell failed — and ``{"ok": ...}`` to REPORT: on failure, the failing
cell's number (1-based, as shown in Jupyter, injected cell included) and its error.
"""

from __future__ import annotations

import json
import keyword
import sys
from pathlib import Path
from typing import Any


def parameters_cell_source(params: dict[str, Any]) -> str:
    """Python assignments for the params that are identifiers; values are JSON, so ``repr`` is a literal."""
    lines = ["# Parameters injected by Legato"]
    for name, value in params.items():
        if name.isidentifier() and not keyword.iskeyword(name):
            lines.append(f"{name} = {value!r}")
    return "\n".join(lines)


def inject_parameters(nb: Any, params: dict[str, Any]) -> int:
    """Insert the injected cell into ``nb``; returns its index."""
    import nbformat

    cell = nbformat.v4.new_code_cell(parameters_cell_source(params))  # type: ignore[no-untyped-call]
    cell.metadata["tags"] = ["injected-parameters"]
    at = 0
    for i, existing in enumerate(nb.cells):
        if "parameters" in existing.get("metadata", {}).get("tags", []):
            at = i + 1
            break
    nb.cells.insert(at, cell)
    return at


def failing_cell(nb: Any) -> tuple[int, str]:
    """(1-based number, "ename: evalue") of the first cell with an error output."""
    for i, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return i + 1, f"{output.get('ename')}: {output.get('evalue')}"
    return 0, "unknown error"


def main(argv: list[str] | None = None) -> int:
    """Run one notebook: ``IN OUT REPORT`` (the parametrised notebook, the executed copy, the JSON report)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print(
            "usage: python -m legato.executor.nbrunner IN.ipynb OUT.ipynb REPORT < call.json", file=sys.stderr
        )
        return 2
    source, target, report_path = (Path(a) for a in args)
    call = json.loads(sys.stdin.buffer.read())
    report: dict[str, Any]
    try:
        import nbclient
        import nbformat
    except ImportError as exc:
        report = {"ok": False, "error": f"notebook steps need nbclient and ipykernel on the executor: {exc}"}
        report_path.write_text(json.dumps(report))
        return 0
    nb = nbformat.read(source, as_version=4)  # type: ignore[no-untyped-call]
    inject_parameters(nb, call.get("params") or {})
    client = nbclient.NotebookClient(
        nb, kernel_name=call.get("kernel") or "python3", resources={"metadata": {"path": str(Path.cwd())}}
    )
    try:
        client.execute()
        report = {"ok": True}
    except nbclient.exceptions.CellExecutionError:
        number, error = failing_cell(nb)
        report = {"ok": False, "error": f"cell {number} failed: {error}", "cell": number}
    except Exception as exc:  # no such kernel, kernel died: the step fails with it
        report = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    nbformat.write(nb, target)  # type: ignore[no-untyped-call]
    report_path.write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
