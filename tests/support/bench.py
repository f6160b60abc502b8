"""The benchmarks' helper modules (``bench/_*.py``) for unit tests: they are scripts' modules, not a
package, so they are loaded from their file (with ``bench/`` on the path for their own imports)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load_bench_module(filename: str) -> ModuleType:
    """``bench/<filename>`` as a module named ``bench<stem>`` (``_servers.py`` -> ``bench_servers``)."""
    name = "bench" + Path(filename).stem
    spec = importlib.util.spec_from_file_location(name, BENCH / filename)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(BENCH))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module
