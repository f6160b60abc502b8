"""Durations in definitions: ``"90s"``, ``"10m"``, ``"2h"``, ``"1d"``, ``"1h30m"``, or a number of seconds."""

from __future__ import annotations

import math

from legato.core.errors import DefinitionError, DefinitionIssue
from legato.sel.durations import MAX_SECONDS, format_duration, parse_duration_text

__all__ = ["format_duration", "parse_duration"]


def parse_duration(value: str | int | float, path: str) -> float:
    """Seconds in a duration text or number; raises :class:`DefinitionError` naming ``path``."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DefinitionError(
            [
                DefinitionIssue(
                    path,
                    f"must be a duration like 90s, 10m, 2h, 1d, 1h30m or a number of seconds, got {type(value).__name__}",
                )
            ]
        )
    if isinstance(value, str):
        try:
            return parse_duration_text(value)
        except ValueError as exc:
            raise DefinitionError([DefinitionIssue(path, str(exc))]) from None
    seconds = float(value)
    if not math.isfinite(seconds) or abs(seconds) > MAX_SECONDS:
        raise DefinitionError([DefinitionIssue(path, f"duration out of range, got {value!r}")])
    return seconds
