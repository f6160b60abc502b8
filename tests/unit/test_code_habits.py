"""Small habits of the production code (libs/ and services/), read from its syntax trees.

No single-letter import aliases (``api as A`` hides what ``A.X`` is); no private modules or names of
OpenTelemetry (they change without notice between SDK releases); no test hook read from the
environment (a ``LEGATO_TEST_*`` name in code): hooks are ``Settings`` fields or constructor arguments
that the tests' process launcher sets.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The trigger API is being split per resource; its modules keep `api as A` until then.
ALIASES_PENDING_THE_API_SPLIT: frozenset[str] = frozenset()


def production_modules() -> Iterator[tuple[str, ast.Module]]:
    for folder in ("libs", "services"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield str(path.relative_to(ROOT)), ast.parse(path.read_text())


def single_letter_aliases(tree: ast.Module) -> list[str]:
    """``import x as Y`` / ``from x import y as Y`` with a one-letter ``Y``."""
    return [
        f"{alias.name} as {alias.asname}"
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
        if alias.asname is not None and len(alias.asname) == 1
    ]


def private_otel_imports(tree: ast.Module) -> list[str]:
    """Imports of an ``opentelemetry`` module or name that starts with ``_``."""
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [(alias.name, "") for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules = [(node.module, alias.name) for alias in node.names]
        else:
            continue
        for module, name in modules:
            if module.split(".")[0] != "opentelemetry":
                continue
            if any(part.startswith("_") for part in module.split(".")) or name.startswith("_"):
                found.append(f"{module}:{name}" if name else module)
    return found


def hook_variable_names(tree: ast.Module) -> list[str]:
    """String constants naming a ``LEGATO_TEST_*`` variable."""
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith("LEGATO_TEST_")
    ]


def test_the_checks_see_what_they_look_for() -> None:
    tree = ast.parse(
        "import numpy as n\n"
        "from legato.protocol import api as A\n"
        "from opentelemetry.sdk.trace import _Span\n"
        "from opentelemetry.sdk._logs import LoggingHandler\n"
        "from opentelemetry import trace as otel_trace\n"
        "import os\n"
        "os.environ.get('LEGATO_TEST_DELIVER_TWICE')\n"
    )
    assert single_letter_aliases(tree) == ["numpy as n", "api as A"]
    assert private_otel_imports(tree) == [
        "opentelemetry.sdk.trace:_Span",
        "opentelemetry.sdk._logs:LoggingHandler",
    ]
    assert hook_variable_names(tree) == ["LEGATO_TEST_DELIVER_TWICE"]


def test_no_single_letter_import_aliases() -> None:
    found = {
        path: aliases
        for path, tree in production_modules()
        if (aliases := single_letter_aliases(tree)) and path not in ALIASES_PENDING_THE_API_SPLIT
    }
    assert found == {}


def test_no_private_opentelemetry_imports() -> None:
    assert {path: names for path, tree in production_modules() if (names := private_otel_imports(tree))} == {}


def test_no_test_hook_is_read_from_the_environment() -> None:
    assert {path: names for path, tree in production_modules() if (names := hook_variable_names(tree))} == {}
