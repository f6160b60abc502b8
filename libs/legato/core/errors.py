"""Definition and parameter errors: every problem names the path and the rule."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec


class DefinitionIssue(msgspec.Struct, frozen=True):
    """One problem in a definition (or in run params): where, and which rule it breaks."""

    path: str
    """Where: ``steps[3].foreach.concurrency``, ``params.start_date``, or the source name for syntax errors."""
    message: str
    """The rule and what was found: ``must be >= 1, got 0``."""

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class DefinitionError(Exception):
    """A definition is invalid; ``errors`` lists every issue found, not just the first."""

    def __init__(self, errors: Iterable[DefinitionIssue]) -> None:
        self.errors: list[DefinitionIssue] = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))

    @property
    def issues(self) -> list[DefinitionIssue]:
        """Same as ``errors``."""
        return self.errors


class ParamError(DefinitionError):
    """Run or step params cannot be resolved: undeclared, missing, or not coercible to their type."""

    def __init__(self, issues: Iterable[DefinitionIssue]) -> None:
        super().__init__(issues)
