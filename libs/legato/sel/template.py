"""``${...}`` templates: text with SEL expressions interpolated.

``"rows=${steps.a.outputs.rows}"`` renders each part with ``str()`` semantics and concatenates;
a template that is exactly one ``${expr}`` yields the expression's typed value (a date stays a
date). ``$${`` writes a literal ``${``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from legato.sel.compiler import ROOT_NAMES, Expression, compile_expression
from legato.sel.errors import SelError, SelLimitError, SelSyntaxError
from legato.sel.limits import DEFAULT_LIMITS, Limits
from legato.sel.runtime import Ctx
from legato.sel.values import to_text

_MAX_TEMPLATE = 200_000


class Template:
    """A compiled template: literal text and expressions, in order."""

    __slots__ = ("_parts", "_single", "path", "references", "source")

    source: str
    path: str
    references: frozenset[tuple[str, ...]]

    def __init__(self, source: str, path: str, parts: list[str | Expression]) -> None:
        self.source = source
        self.path = path
        self._parts = parts
        self._single = parts[0] if len(parts) == 1 and isinstance(parts[0], Expression) else None
        refs: set[tuple[str, ...]] = set()
        for part in parts:
            if isinstance(part, Expression):
                refs |= part.references
        self.references = frozenset(refs)

    @property
    def is_constant(self) -> bool:
        """True when the template holds no expression (its value is its text)."""
        return all(isinstance(p, str) for p in self._parts)

    @property
    def expressions(self) -> list[Expression]:
        """The interpolated expressions, in order."""
        return [p for p in self._parts if isinstance(p, Expression)]

    @property
    def uses_clock(self) -> bool:
        return any(e.uses_clock for e in self.expressions)

    @property
    def parts(self) -> list[str | Expression]:
        """Literal text and expressions, in order."""
        return list(self._parts)

    def evaluate(
        self, env: Mapping[str, Any], limits: Limits | None = None, *, now: datetime | None = None
    ) -> Any:
        """The rendered text, or the typed value of a template that is exactly one ``${expr}``."""
        if self._single is not None:
            return self._single.evaluate(env, limits, now=now)
        return self.render(env, limits, now=now)

    def render(
        self,
        env: Mapping[str, Any],
        limits: Limits | None = None,
        *,
        now: datetime | None = None,
        escape: Callable[[int, Any, str], str] | None = None,
    ) -> str:
        """Always text: each expression's value as text, passed through ``escape(index, value, text)``.

        ``index`` counts expressions from 0; ``escape`` (shell quoting, for one) sees the typed value
        too. Literal text is never escaped.
        """
        limits = limits or DEFAULT_LIMITS
        out: list[str] = []
        size = 0
        index = 0
        for part in self._parts:
            if isinstance(part, str):
                text = part
            else:
                value = part.evaluate(env, limits, now=now)
                if type(value) is str:
                    text = value
                else:
                    ctx = Ctx(env, limits, now, 0)
                    try:
                        text = to_text(value, ctx)
                    except SelError as exc:
                        raise exc.located(part.source, self.path) from None
                if escape is not None:
                    text = escape(index, value, text)
                index += 1
            size += len(text)
            if size > limits.max_string:
                raise SelLimitError(
                    f"rendered text exceeds the limit of {limits.max_string} characters",
                    limit="max_string",
                    expression=self.source,
                    path=self.path,
                )
            out.append(text)
        return "".join(out)

    def __repr__(self) -> str:
        return f"Template({self.source!r})"


def _closing_brace(text: str, start: int) -> int:
    """Index of the ``}`` closing a ``${`` whose expression starts at ``start``; -1 when unclosed.

    Braces inside string literals and nested ``{}``/``[]``/``()`` do not count.
    """
    depth = 0
    i = start
    n = len(text)
    while i < n:
        c = text[i]
        if c in "'\"":
            quote = c * 3 if text.startswith(c * 3, i) else c
            i += len(quote)
            while i < n and not text.startswith(quote, i):
                i += 2 if text[i] == "\\" else 1
            i += len(quote)
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0:
                return i if c == "}" else -1
            depth -= 1
        i += 1
    return -1


def compile_template(
    text: str, *, path: str = "", limits: Limits | None = None, roots: frozenset[str] = ROOT_NAMES
) -> Template:
    """Compile a ``${...}`` template; raises :class:`SelSyntaxError` for a bad or unclosed expression."""
    if not isinstance(text, str):
        raise SelSyntaxError(f"a template must be text, got {type(text).__name__}", path=path)
    if len(text) > _MAX_TEMPLATE:
        raise SelSyntaxError(f"template longer than {_MAX_TEMPLATE} characters", path=path)
    parts: list[str | Expression] = []
    literal: list[str] = []
    i = 0
    while True:
        j = text.find("$", i)
        if j < 0:
            literal.append(text[i:])
            break
        literal.append(text[i:j])
        if text.startswith("$${", j):
            literal.append("${")
            i = j + 3
        elif text.startswith("${", j):
            end = _closing_brace(text, j + 2)
            if end < 0:
                raise SelSyntaxError(
                    "unclosed ${ in template (write $${ for a literal ${)",
                    expression=text,
                    position=_line_col(text, j),
                    path=path,
                )
            if "".join(literal):
                parts.append("".join(literal))
            literal = []
            parts.append(compile_expression(text[j + 2 : end], path=path, limits=limits, roots=roots))
            i = end + 1
        else:
            literal.append("$")
            i = j + 1
    if "".join(literal) or not parts:
        parts.append("".join(literal))
    return Template(text, path, parts)


def _line_col(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def is_template(text: str) -> bool:
    """True when ``text`` holds a ``${...}`` expression (a cheap check before compiling)."""
    return "${" in text
