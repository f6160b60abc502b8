"""The import graph of ``libs/`` and ``services/`` keeps the layering docs/architecture.md draws.

Libraries stand on floors: a lib imports only libs on lower floors, so nothing imports upward and the
libs have no cycle. The CLI is narrower still: it talks to the system through the client and runs the
dev stack, never the bus or the store itself. A lib never imports a service; a service imports libs
and itself, never another service (services talk over NATS).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIBS = ROOT / "libs" / "legato"
SERVICES = ROOT / "services" / "legato"

# Bottom up; a lib may import the libs of the floors below its own.
FLOORS: tuple[frozenset[str], ...] = (
    frozenset({"sel", "telemetry", "config"}),
    frozenset({"core", "lifecycle"}),
    frozenset({"protocol", "flow"}),
    frozenset({"bus"}),
    frozenset({"security", "store"}),
    frozenset({"client", "runtime"}),
    frozenset({"web"}),
    frozenset({"devstack"}),
    frozenset({"cli"}),
)
CLI_MAY_IMPORT = frozenset({"client", "config", "core", "devstack", "flow", "protocol", "web"})


def floor_of(lib: str) -> int:
    return next(i for i, floor in enumerate(FLOORS) if lib in floor)


def legato_imports(source: str) -> set[str]:
    """The top-level ``legato`` packages a module imports (``legato.bus.consumer`` -> ``bus``), including
    imports under ``TYPE_CHECKING`` and inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module != "legato" else [f"legato.{a.name}" for a in node.names]
        found.update(n.split(".")[1] for n in names if n.startswith("legato.") and n.count(".") >= 1)
    return found


def package_imports(folder: Path) -> dict[str, dict[str, set[str]]]:
    """For each package under ``folder``: each of its modules and the other packages it imports."""
    graph: dict[str, dict[str, set[str]]] = {}
    for package in sorted(p for p in folder.iterdir() if p.is_dir() and p.name != "__pycache__"):
        graph[package.name] = {
            str(module.relative_to(folder.parent)): legato_imports(module.read_text()) - {package.name}
            for module in sorted(package.rglob("*.py"))
        }
    return graph


def test_import_scan_sees_every_form_of_import() -> None:
    source = (
        "import legato.bus.consumer\n"
        "from legato.store import pool\n"
        "from legato import sel\n"
        "from . import sibling\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from legato.config.settings import Settings\n"
        "def later():\n"
        "    from legato.devstack.stack import run_dev\n"
    )
    assert legato_imports(source) == {"bus", "store", "sel", "config", "devstack"}


def test_every_lib_has_a_floor() -> None:
    libs = set(package_imports(LIBS))
    placed = set().union(*FLOORS)
    assert libs - placed == set(), "place the new lib on a floor in FLOORS and in docs/architecture.md"
    assert placed - libs == set()


@pytest.mark.parametrize("lib", sorted(set().union(*FLOORS)))
def test_a_lib_imports_only_libs_below_it(lib: str) -> None:
    upward = {
        module: sorted(target for target in targets if target not in set().union(*FLOORS[: floor_of(lib)]))
        for module, targets in package_imports(LIBS)[lib].items()
    }
    assert {module: targets for module, targets in upward.items() if targets} == {}


def test_the_cli_reaches_the_system_through_the_client_and_the_dev_stack() -> None:
    imports = {m: t - CLI_MAY_IMPORT for m, t in package_imports(LIBS)["cli"].items()}
    assert {module: sorted(t) for module, t in imports.items() if t} == {}


# The console is a client like the CLI: it reaches Legato through the typed client (over NATS) only,
# never the bus internals or the store (docs/web.md).
WEB_MAY_IMPORT = frozenset({"client", "config", "core", "protocol", "security"})


def test_the_web_console_reaches_the_system_through_the_client_only() -> None:
    imports = {m: t - WEB_MAY_IMPORT for m, t in package_imports(LIBS)["web"].items()}
    assert {module: sorted(t) for module, t in imports.items() if t} == {}


def test_services_import_libs_and_never_each_other() -> None:
    services = package_imports(SERVICES)
    assert set(services) == {"trigger", "scheduler", "executor", "signal_router"}
    libs = set().union(*FLOORS)
    crossing = {
        module: sorted(targets - libs)
        for modules in services.values()
        for module, targets in modules.items()
        if targets - libs
    }
    assert crossing == {}
