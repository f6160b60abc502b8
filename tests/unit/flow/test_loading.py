"""``module:attr`` and ``file.py:attr`` find a Workflow; the CLI reads it where it reads a definition file."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from legato.cli.main import main
from legato.flow import Workflow, WorkflowNotFound, load_workflow

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "code" / "daily_sales.py"

FLOW_FILE = """
from legato.flow import Shell, Workflow
from helper_names import STEP  # a sibling module: the file's folder is importable

flow = Workflow("from-file").step(Shell(STEP, "echo hi"))
broken = Workflow("broken").step(Shell("a", "echo", retry=-1))
not_a_flow = 42
"""


@pytest.fixture
def flow_dir(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "helper_names.py").write_text('STEP = "greet"\n')
    (tmp_path / "my_flows.py").write_text(FLOW_FILE)
    (tmp_path / "raising.py").write_text("raise RuntimeError('no config here')\n")
    yield tmp_path
    for name in ("my_flows", "helper_names", "raising"):  # imported by name: forget them for the next test
        sys.modules.pop(name, None)


def test_a_file_path_and_a_module_name_both_find_the_workflow(
    flow_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    by_file = load_workflow(f"{flow_dir / 'my_flows.py'}:flow")
    assert isinstance(by_file, Workflow) and by_file.definition().steps[0].id == "greet"
    monkeypatch.chdir(flow_dir)  # a dotted module is imported from the current directory, as `python -m` does
    by_name = load_workflow("my_flows:flow")
    assert by_name.definition() == by_file.definition()
    assert load_workflow(f"{EXAMPLE}:flow").id == "daily-sales"


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("my_flows.py:nope", "my_flows.py:nope: my_flows.py has no attribute 'nope'"),
        ("my_flows.py:not_a_flow", "my_flows.py:not_a_flow: is a int, not a legato.flow.Workflow"),
        ("my_flows.py:flow.id", "my_flows.py:flow.id: is a str, not a legato.flow.Workflow"),
        ("missing.py:flow", "missing.py:flow: no such file 'missing.py'"),
        ("no_such_module:flow", "no_such_module:flow: no module named 'no_such_module'"),
        ("my_flows.nested:flow", "no module named 'my_flows.nested'"),
        ("raising.py:flow", "raising.py:flow: running raising.py failed: RuntimeError: no config here"),
        ("raising:flow", "raising:flow: importing raising failed: RuntimeError: no config here"),
        ("my_flows.py", "expected module:attr or path/to/file.py:attr"),
        ("my_flows.py:1x", "expected module:attr or path/to/file.py:attr"),
    ],
)
def test_what_is_missing_is_said(
    flow_dir: Path, monkeypatch: pytest.MonkeyPatch, reference: str, message: str
) -> None:
    monkeypatch.chdir(flow_dir)
    with pytest.raises(WorkflowNotFound) as caught:
        load_workflow(reference)
    assert message in str(caught.value)


def test_cli_validate_and_plan_take_module_attr(
    flow_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(flow_dir)
    assert main(["workflow", "validate", "my_flows.py:flow", "my_flows:flow"]) == 0
    assert capsys.readouterr().out == "my_flows.py:flow: OK\nmy_flows:flow: OK\n"

    assert main(["workflow", "validate", "--json", "my_flows.py:broken", "my_flows.py:nope"]) == 1
    report = json.loads(capsys.readouterr().out)["files"]
    assert report["my_flows.py:broken"] == [
        {"path": "steps[0].retry.error", "message": "must be >= 0, got -1"}
    ]
    assert report["my_flows.py:nope"] == [{"path": "", "message": "my_flows.py has no attribute 'nope'"}]

    assert main(["workflow", "validate", "my_flows.py"]) == 1  # a .py file without :attr says what to write
    assert "a Python file: name the Workflow in it, as my_flows.py:flow" in capsys.readouterr().out

    assert main(["workflow", "plan", "my_flows.py:flow", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["workflow"]["id"] == "from-file"


def test_an_existing_file_wins_over_a_reference(flow_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(flow_dir)
    (flow_dir / "odd:name").write_text("id: plain-file\nsteps: [{id: a, type: noop}]\n")
    assert main(["workflow", "validate", "odd:name"]) == 0


def test_the_dev_stack_loads_a_py_example_by_its_flow_and_skips_helpers(flow_dir: Path) -> None:
    from legato.devstack.stack import code_example

    text = code_example(EXAMPLE)
    assert text is not None and text == load_workflow(f"{EXAMPLE}:flow").source_yaml()
    assert code_example(EXAMPLE.parent / "sales_steps.py") is None
    with pytest.raises(WorkflowNotFound, match="no config here"):
        code_example(flow_dir / "raising.py")
