"""Every bench imports: ``make bench`` runs them one after the other, and none is run by the tests, so
an import a refactoring broke (a name moved out of another bench's module) would only show there."""

from __future__ import annotations

import pytest

from tests.support.bench import BENCH, load_bench_module


@pytest.mark.parametrize("filename", sorted(p.name for p in BENCH.glob("*.py")))
def test_the_bench_imports(filename: str) -> None:
    module = load_bench_module(filename)
    if not filename.startswith("_"):
        assert callable(getattr(module, "main", None)), f"{filename} has no main()"
