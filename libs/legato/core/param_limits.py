"""Size limits on a run's params, checked when the run starts (a clear error instead of failed steps).

Params travel in every work item (one NATS message, 1 MiB at most by default) and are stored as
``jsonb`` (which cannot hold a NUL character). Limits, on the params' JSON form:

- one param: at most ``MAX_PARAM_BYTES`` (128 KiB);
- all params of a run together: at most ``MAX_PARAMS_BYTES`` (256 KiB);
- no NUL character (``\\u0000``) in any text.

A step receives a param over 32 KiB through a file (``LEGATO_PARAM_<NAME>_FILE``), not a variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from legato.core.errors import DefinitionIssue
from legato.core.values import to_json_value

MAX_PARAM_BYTES = 128 * 1024
MAX_PARAMS_BYTES = 256 * 1024


def param_limit_issues(params: Mapping[str, Any]) -> list[DefinitionIssue]:
    """Every param over its limit or holding a NUL character; empty when all are within limits."""
    issues: list[DefinitionIssue] = []
    total = 0
    for name, value in params.items():
        try:
            size = len(msgspec.json.encode(to_json_value(value)))
        except (TypeError, ValueError):
            continue  # not JSON-able: reported by whoever needs it as JSON
        total += size
        if size > MAX_PARAM_BYTES:
            issues.append(
                DefinitionIssue(
                    f"params.{name}",
                    f"{_kib(size)} is over the limit of {_kib(MAX_PARAM_BYTES)} for one param "
                    "(pass a reference to the data instead: a path, a URL, a key)",
                )
            )
        if _has_nul(value):
            issues.append(
                DefinitionIssue(
                    f"params.{name}", "contains a NUL character (\\u0000), which a param cannot hold"
                )
            )
    if total > MAX_PARAMS_BYTES and not issues:
        issues.append(
            DefinitionIssue(
                "params", f"{_kib(total)} in all is over the limit of {_kib(MAX_PARAMS_BYTES)} per run"
            )
        )
    return issues


def _kib(size: int) -> str:
    return f"{size / 1024:.1f} KiB" if size % 1024 else f"{size // 1024} KiB"


def _has_nul(value: Any, depth: int = 0) -> bool:
    if isinstance(value, str):
        return "\0" in value
    if depth > 100:
        return False
    if isinstance(value, dict):
        return any(_has_nul(k, depth + 1) or _has_nul(v, depth + 1) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_has_nul(v, depth + 1) for v in value)
    return False
