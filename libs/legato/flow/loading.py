"""Find a :class:`~legato.flow.Workflow` by reference: ``package.module:attr`` or ``path/to/file.py:attr``."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

from legato.flow.workflow import Workflow

REFERENCE = re.compile(r"(?P<module>.+):(?P<attr>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)")
"""``module:attr``: the module a dotted name or a ``.py`` file, the attribute a (dotted) name in it."""


class WorkflowNotFound(Exception):
    """A ``module:attr`` reference does not lead to a Workflow; the message says which part failed and why.

    ``missing`` names the part: ``reference`` (not ``module:attr``), ``module`` (no such module or file, or
    it raised while imported), ``attribute`` (no such attribute) or ``workflow`` (not a Workflow).
    """

    def __init__(self, message: str, missing: str = "module") -> None:
        super().__init__(message)
        self.missing = missing


def is_reference(text: str) -> bool:
    """Whether ``text`` has the shape of ``module:attr`` (it may still fail to load)."""
    return REFERENCE.fullmatch(text) is not None


def load_workflow(reference: str) -> Workflow:
    """The Workflow object ``reference`` names; raises :class:`WorkflowNotFound` with the reason.

    A module given by dotted name is imported from ``sys.path`` with the current directory first (as
    ``python -m`` does); a ``.py`` file is executed as a module, with its own folder importable.
    """
    found = REFERENCE.fullmatch(reference)
    if found is None:
        raise WorkflowNotFound(f"{reference}: expected module:attr or path/to/file.py:attr", "reference")
    module_name, attr = found["module"], found["attr"]
    if module_name.endswith(".py") or "/" in module_name or "\\" in module_name:
        module = _module_from_file(Path(module_name), reference)
    else:
        module = _module_by_name(module_name, reference)
    obj: object = module
    walked = module_name
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise WorkflowNotFound(f"{reference}: {walked} has no attribute {part!r}", "attribute")
        obj = getattr(obj, part)
        walked = f"{walked}:{part}" if walked == module_name else f"{walked}.{part}"
    if not isinstance(obj, Workflow):
        raise WorkflowNotFound(
            f"{reference}: is a {type(obj).__name__}, not a legato.flow.Workflow", "workflow"
        )
    return obj


def _module_by_name(name: str, reference: str) -> ModuleType:
    cwd = str(Path.cwd())
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise WorkflowNotFound(f"{reference}: no module named {exc.name!r}") from None
        raise WorkflowNotFound(f"{reference}: importing {name} failed: {exc}") from None
    except Exception as exc:  # the user's module raised while it ran: say so, in one line
        raise WorkflowNotFound(f"{reference}: importing {name} failed: {type(exc).__name__}: {exc}") from None
    finally:
        if added:
            sys.path.remove(cwd)


def _module_from_file(path: Path, reference: str) -> ModuleType:
    if not path.is_file():
        raise WorkflowNotFound(f"{reference}: no such file {str(path)!r}")
    resolved = path.resolve()
    # a private, stable module name: the same file loaded twice is the same module
    name = "_legato_flow_" + hashlib.sha256(str(resolved).encode()).hexdigest()[:16]
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise WorkflowNotFound(f"{reference}: cannot load {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    folder = str(resolved.parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's file raised while it ran: say so, in one line
        sys.modules.pop(name, None)
        raise WorkflowNotFound(f"{reference}: running {path} failed: {type(exc).__name__}: {exc}") from None
    finally:
        if added:
            sys.path.remove(folder)
    return module
