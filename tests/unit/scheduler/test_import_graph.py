"""The scheduler's modules import one way: no cycle among the engine, the child steps and the spans."""

from __future__ import annotations

import ast
from pathlib import Path

import legato.scheduler

PACKAGE = "legato.scheduler"
ROOT = Path(next(iter(legato.scheduler.__path__)))


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([PACKAGE, *parts])


def is_module(name: str) -> bool:
    rel = ROOT.joinpath(*name.split(".")[2:])
    return rel.with_suffix(".py").exists() or (rel / "__init__.py").exists()


def scheduler_imports(path: Path) -> set[str]:
    """Every scheduler module ``path`` imports, at any place (``TYPE_CHECKING`` blocks included)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith(PACKAGE))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE):
            for alias in node.names:  # ``from legato.scheduler import engine`` imports a module
                sub = f"{node.module}.{alias.name}"
                out.add(sub if is_module(sub) else node.module)
    return out


def import_graph() -> dict[str, set[str]]:
    graph = {module_name(p): scheduler_imports(p) for p in ROOT.rglob("*.py")}
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as a path that ends where it began), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_scheduler_has_no_import_cycle() -> None:
    graph = import_graph()
    assert f"{PACKAGE}.engine" in graph and f"{PACKAGE}.child_steps.foreach" in graph
    assert find_cycle(graph) is None


BESIDE_THE_ENGINE = ("run_spans", "span_facts", "run_views", "permits", "stops", "state")


def test_child_steps_spans_and_rules_never_import_the_engine() -> None:
    graph = import_graph()
    below = [
        m
        for m in graph
        if m.startswith(f"{PACKAGE}.child_steps") or m.removeprefix(f"{PACKAGE}.") in BESIDE_THE_ENGINE
    ]
    assert len(below) >= 13
    for module in below:
        assert not {d for d in graph[module] if d in (f"{PACKAGE}.engine", f"{PACKAGE}.actors")}, module


def test_the_engine_parts_import_only_the_base() -> None:
    """Each part of ``RunEngine`` stands alone over ``engine/base.py``; only the package puts them together."""
    graph = import_graph()
    engine = f"{PACKAGE}.engine"
    parts = [m for m in graph if m.startswith(f"{engine}.") and m != f"{engine}.base"]
    assert len(parts) >= 7
    for part in parts:
        assert {d for d in graph[part] if d == engine or d.startswith(f"{engine}.")} == {f"{engine}.base"}, (
            part
        )
    assert {f"{engine}.{p}" for p in ("runs", "graph", "results", "children")} <= graph[engine]


# A file is one idea: no scheduler module, and no class, grows back into a monolith (engine.py was
# 1,234 lines, RunEngine 1,110). repository.py is the scheduler's SQL that loads, locks and reads in one
# place (issue 12; a batch's writes are writes.py) and is allowed a little more.
MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 400
LARGER_MODULES = {"repository.py": 660}


def test_no_scheduler_module_or_class_is_a_monolith() -> None:
    too_big: dict[str, int] = {}
    for path in ROOT.rglob("*.py"):
        text = path.read_text()
        rel = str(path.relative_to(ROOT))
        if (lines := len(text.splitlines())) > LARGER_MODULES.get(rel, MAX_MODULE_LINES):
            too_big[rel] = lines
        for node in ast.walk(ast.parse(text)):
            size = (node.end_lineno or node.lineno) - node.lineno + 1 if isinstance(node, ast.ClassDef) else 0
            if isinstance(node, ast.ClassDef) and size > MAX_CLASS_LINES:
                too_big[f"{rel}:{node.name}"] = size
    assert too_big == {}
