"""The notebook worker's pure parts: the injected parameters cell, where it goes, the failing cell."""

from __future__ import annotations

import nbformat

from legato.executor.nbrunner import failing_cell, inject_parameters, parameters_cell_source


def test_params_become_python_literals_and_odd_names_are_left_out() -> None:
    source = parameters_cell_source(
        {"day": "2026-03-01", "n": 3, "ok": True, "none": None, "m": {"a": [1.5]}, "bad-name": 1, "class": 2}
    )
    namespace: dict[str, object] = {}
    exec(source, namespace)
    assert {k: v for k, v in namespace.items() if not k.startswith("__")} == {
        "day": "2026-03-01",
        "n": 3,
        "ok": True,
        "none": None,
        "m": {"a": [1.5]},
    }


def test_the_cell_goes_after_the_parameters_cell_or_first() -> None:
    nb = nbformat.v4.new_notebook()
    tagged = nbformat.v4.new_code_cell("x = 1")
    tagged.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# title"), tagged, nbformat.v4.new_code_cell("print(x)")]
    assert inject_parameters(nb, {"x": 2}) == 2
    assert nb.cells[2].source.endswith("x = 2")
    plain = nbformat.v4.new_notebook()
    plain.cells = [nbformat.v4.new_code_cell("print(x)")]
    assert inject_parameters(plain, {"x": 2}) == 0


def test_failing_cell_is_the_first_with_an_error_output() -> None:
    nb = nbformat.v4.new_notebook()
    broken = nbformat.v4.new_code_cell("1/0")
    broken.outputs = [nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="division by zero")]
    nb.cells = [nbformat.v4.new_code_cell("x = 1"), broken]
    assert failing_cell(nb) == (2, "ZeroDivisionError: division by zero")
