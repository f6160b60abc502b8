"""docs/workflows-as-code.md runs: each python block in order (one namespace, from the checkout), and each
yaml block is the same definition as the ``flow`` built just before it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from legato.core import parse_definition

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "workflows-as-code.md"
BLOCK = re.compile(r"^```(python|yaml)\n(.*?)^```", re.DOTALL | re.MULTILINE)


def test_every_snippet_runs_and_every_yaml_block_is_its_flow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    blocks = BLOCK.findall(DOC.read_text())
    assert [kind for kind, _ in blocks].count("python") >= 4 and [kind for kind, _ in blocks].count(
        "yaml"
    ) >= 2
    namespace: dict[str, Any] = {}
    for kind, code in blocks:
        if kind == "python":
            exec(compile(code, str(DOC), "exec"), namespace)  # the doc's own snippets
        else:
            assert parse_definition(code) == namespace["flow"].definition(), code
