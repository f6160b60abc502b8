"""Small helpers to write definitions in tests."""

from __future__ import annotations

import copy
import json
from typing import Any

from legato.core import DefinitionError, WorkflowDefinition, parse_definition


def definition(**fields: Any) -> dict[str, Any]:
    """A minimal valid definition (one noop step) with ``fields`` replacing or adding top-level keys."""
    base: dict[str, Any] = {"id": "wf", "steps": [{"id": "a", "type": "noop"}]}
    base.update(copy.deepcopy(fields))
    return base


def text(data: dict[str, Any]) -> str:
    return json.dumps(data)


def parse(data: dict[str, Any]) -> WorkflowDefinition:
    return parse_definition(text(data))


def issues(data: dict[str, Any] | str) -> list[str]:
    """Every issue of a definition as ``path: message`` lines ([] when valid)."""
    try:
        parse_definition(data if isinstance(data, str) else text(data))
    except DefinitionError as exc:
        return [str(i) for i in exc.errors]
    return []


def only_issue(data: dict[str, Any] | str) -> str:
    found = issues(data)
    assert len(found) == 1, found
    return found[0]
