"""The example step-type plugin (examples/plugin) installed into this venv, as a user would."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parents[2] / "examples" / "plugin"


def example_plugin_installed() -> bool:
    return any(ep.name == "word_count" for ep in entry_points(group="legato.step_types"))


def install_example_plugin(*, always: bool = False) -> None:
    """``pip install -e examples/plugin`` into the running interpreter's environment."""
    if example_plugin_installed() and not always:
        return
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--editable", str(PLUGIN_DIR)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert example_plugin_installed(), "installed, but its entry point is not visible"
