"""SEL errors: every failure of an expression, at compile or at run time, is one of these.

Each error carries the expression's source, the position (line, column; 1-based, in characters),
the reason, and the definition path it belongs to, so a user sees
``steps[2].when: budget of 100000 steps exceeded at 1:15 in `...```.
"""

from __future__ import annotations

_SOURCE_SHOWN = 160  # characters of the expression repeated in a message


class SelError(Exception):
    """Base class of every SEL error."""

    def __init__(
        self,
        reason: str,
        *,
        expression: str = "",
        position: tuple[int, int] | None = None,
        path: str = "",
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.expression = expression
        self.position = position
        self.path = path

    def located(self, expression: str, path: str, position: tuple[int, int] | None = None) -> SelError:
        """Fill in what the raising site did not know (the source, the path, a position); returns self."""
        if not self.expression:
            self.expression = expression
        if not self.path:
            self.path = path
        if self.position is None:
            self.position = position
        return self

    def describe(self) -> str:
        """The message without the path prefix: reason, position and source."""
        text = self.reason
        if self.position is not None:
            text += f" at {self.position[0]}:{self.position[1]}"
        if self.expression:
            shown = self.expression
            if len(shown) > _SOURCE_SHOWN:
                shown = shown[: _SOURCE_SHOWN - 3] + "..."
            text += f" in `{shown}`"
        return text

    def __str__(self) -> str:
        return f"{self.path}: {self.describe()}" if self.path else self.describe()


class SelSyntaxError(SelError):
    """The expression does not parse, or uses something SEL does not allow (checked at compile time)."""


class SelEvalError(SelError):
    """The expression failed at run time: a type error, a missing key, a bad argument..."""

    def __init__(
        self,
        reason: str,
        *,
        expression: str = "",
        position: tuple[int, int] | None = None,
        path: str = "",
        internal: bool = False,
    ) -> None:
        super().__init__(reason, expression=expression, position=position, path=path)
        # True when a host exception escaped the interpreter: a SEL bug, reported but never raised raw.
        self.internal = internal


class SelLimitError(SelError):
    """The expression exceeded a limit: its step budget or a size cap. ``limit`` names which one."""

    def __init__(
        self,
        reason: str,
        *,
        limit: str,
        expression: str = "",
        position: tuple[int, int] | None = None,
        path: str = "",
    ) -> None:
        super().__init__(reason, expression=expression, position=position, path=path)
        self.limit = limit
