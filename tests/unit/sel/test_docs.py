"""The user documentation lists every library function (and nothing that does not exist)."""

from __future__ import annotations

import re
from pathlib import Path

from legato.sel import FUNCTIONS

DOC = Path(__file__).resolve().parents[3] / "docs" / "workflows.md"


def test_every_function_is_documented() -> None:
    text = DOC.read_text()
    listed = set(re.findall(r"`([a-z_0-9]+)`", text.split("Functions:", 1)[1]))
    assert set(FUNCTIONS) <= listed, sorted(set(FUNCTIONS) - listed)
    assert listed <= set(FUNCTIONS), sorted(listed - set(FUNCTIONS))
