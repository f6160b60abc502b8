"""Shell ``command`` templates: every ``${…}`` value is quoted for where it sits in the command.

A value substituted into a shell step's ``command`` always reaches the command as one literal word:
``echo ${params.x}`` with ``x = "a; id > out"`` runs ``echo 'a; id > out'``. The quoting follows the
shell's own quoting at the place of the ``${…}`` (the literal text around it is scanned like
``/bin/sh`` reads it):

- outside quotes (also inside ``$(…)``): ``shlex.quote`` of the value;
- inside ``"…"``: ``\\``, ``$``, `````` ` `````` and ``"`` get a backslash;
- inside ``'…'``: each ``'`` becomes ``'"'"'``.

Places where no quoting can be right (inside backticks, a here-document, or a shell ``${VAR…}``
expansion) are definition errors. ``${raw(expr)}`` opts out: the value is pasted as shell code, and
``legato workflow validate`` warns about it. A ``secret`` param is never pasted: it becomes a reference
to the environment variable ``LEGATO_SECRET_<NAME>`` the executor sets from the secret store, so the
secret's value is never part of a command, a work item or a record.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from legato.core.errors import DefinitionIssue
from legato.core.expressions import ConstNode, ValueNode, syntax_issue
from legato.core.model import ForeachStep, ShellStep, Step, WorkflowDefinition, step_body
from legato.core.secrets import secret_env_name, secret_name_of
from legato.sel import Expression, Limits, SelSyntaxError, compile_expression
from legato.sel.template import Template, compile_template

Context = Literal["plain", "double", "single", "backtick", "heredoc", "expansion", "ansi", "unknown"]

_QUOTABLE: frozenset[Context] = frozenset({"plain", "double", "single"})
_WHY_NOT = {
    "backtick": "inside backticks; use $(…) instead",
    "heredoc": "inside a here-document; pass it through `env:` or a file instead",
    "expansion": "inside a shell ${…} expansion or right after a backslash",
    "ansi": "inside $'…'",
    "unknown": "after a `case` inside $(…), where Legato cannot follow the quoting",
}
MAX_SYNTAX_CHECKS = 200  # distinct commands checked with `sh -n` per definition (one process each)
_CASE = re.compile(r"case(?=[\s;&|()])")
_WORD_START = frozenset(" \t\n;&|()")
_WRAPPED = re.compile(r"^\s*(raw|shell_quote)\s*\((.*)\)\s*$", re.DOTALL)


def quote_for(context: Context, text: str) -> str:
    """``text`` as one literal word at a place of this kind in a shell command."""
    if context == "double":
        return re.sub(r'([\\$`"])', r"\\\1", text)
    if context == "single":
        return text.replace("'", "'\"'\"'")
    return shlex.quote(text)


def secret_reference(context: Context, name: str) -> str:
    """A reference to the secret's environment variable, expanded by the shell as one word."""
    var = secret_env_name(name)
    if context == "double":
        return "${" + var + "}"
    if context == "single":
        return "'\"${" + var + "}\"'"
    return '"${' + var + '}"'


@dataclass(frozen=True, slots=True)
class _Substitution:
    context: Context
    raw: bool


class ShellCommandNode(ValueNode):
    """A compiled shell ``command``: literal shell text with quoted substitutions."""

    __slots__ = ("path", "references", "subs", "template", "uses_clock")

    def __init__(self, template: Template, subs: list[_Substitution], path: str) -> None:
        self.template = template
        self.subs = subs
        self.path = path
        self.references = template.references
        self.uses_clock = template.uses_clock

    @property
    def raw_paths(self) -> list[str]:
        """The ``raw(…)`` substitutions, by expression source (for validate's warning)."""
        exprs = self.template.expressions
        return [exprs[i].source for i, sub in enumerate(self.subs) if sub.raw]

    def evaluate(
        self, env: Mapping[str, Any], limits: Limits | None = None, now: datetime | None = None
    ) -> Any:
        def escape(index: int, value: Any, text: str) -> str:
            sub = self.subs[index]
            secret = secret_name_of(value)
            if secret is not None:
                return secret_reference(sub.context, secret)
            return text if sub.raw else quote_for(sub.context, text)

        return self.template.render(env, limits, now=now, escape=escape)

    def expressions(self) -> list[tuple[str, Expression]]:
        return [(self.path, e) for e in self.template.expressions]


def compile_shell_command(text: str, path: str, issues: list[DefinitionIssue]) -> ValueNode:
    """Compile a shell command template; misplaced substitutions are appended to ``issues``."""
    try:
        template = compile_template(text, path=path)
    except SelSyntaxError as exc:
        issues.append(syntax_issue(exc, path))
        return ConstNode("")
    parts = template.parts
    literals: list[str] = []
    current: list[str] = []
    new_parts: list[str | Expression] = []
    subs_raw: list[bool] = []
    for part in parts:
        if isinstance(part, str):
            current.append(part)
            new_parts.append(part)
            continue
        literals.append("".join(current))
        current = []
        inner, raw = _unwrap(part)
        new_parts.append(inner)
        subs_raw.append(raw)
    contexts = substitution_contexts(literals)
    subs: list[_Substitution] = []
    for i, (context, raw) in enumerate(zip(contexts, subs_raw, strict=True)):
        if not raw and context not in _QUOTABLE:
            source = [p for p in new_parts if not isinstance(p, str)][i].source
            issues.append(
                DefinitionIssue(
                    path,
                    f"${{{source}}} cannot be quoted {_WHY_NOT[context]} "
                    "(or write ${raw(…)} to paste it unquoted, at your own risk)",
                )
            )
        subs.append(_Substitution(context, raw))
    return ShellCommandNode(Template(text, path, new_parts), subs, path)


def _unwrap(expr: Expression) -> tuple[Expression, bool]:
    """``raw(e)`` -> (e, raw); ``shell_quote(e)`` -> (e, quoted as usual); anything else as it is."""
    m = _WRAPPED.match(expr.source)
    if m is None:
        return expr, False
    try:
        inner = compile_expression(m.group(2), path=expr.path)
    except SelSyntaxError:
        return expr, False  # e.g. raw(a) + raw(b): not one call, quoted as a whole
    return inner, m.group(1) == "raw"


def substitution_contexts(literals: list[str]) -> list[Context]:
    """Where each substitution sits: ``literals[i]`` is the shell text before substitution ``i``.

    A small reader of POSIX ``sh`` quoting: quotes, backslashes, ``$(…)`` (also nested in ``"…"``),
    backticks, ``${…}`` expansions, comments and here-documents. Substituted values are quoted so as
    to leave the reader's state unchanged, so only the literal text moves it.
    """
    reader = _ShellReader()
    contexts: list[Context] = []
    for text in literals:
        reader.feed(text)
        contexts.append(reader.context())
        reader.prev = "x"  # the value is part of a word: a "#" right after it starts no comment
    return contexts


class _ShellReader:
    def __init__(self) -> None:
        # Frames: [kind, open parens, saw `case`]; kind "plain" (top level or inside $(…)), "double",
        # "single", "ansi" ($'…'), "backtick", "expansion".
        self.stack: list[list[Any]] = [["plain", 0, False]]
        self.lost = False  # a `case` inside $(…): its patterns' ")" cannot be told from the closing one
        self.pending_heredocs: list[tuple[str, bool]] = []
        self.heredoc: tuple[str, bool] | None = None
        self.line = ""  # current line of a here-document body
        self.escaped = False
        self.comment = False
        self.prev = "\n"

    def context(self) -> Context:
        if self.lost:
            return "unknown"
        if self.heredoc is not None:
            return "heredoc"
        kind: str = self.stack[-1][0]
        if self.escaped:
            # "\${x}": the value's first character would be escaped; quoting still holds for the rest,
            # but say no rather than reason about it.
            return "expansion"
        return kind  # type: ignore[return-value]

    def feed(self, text: str) -> None:
        i = 0
        n = len(text)
        while i < n:
            i = self._step(text, i, text[i])
            self.prev = text[i - 1]

    def _step(self, text: str, i: int, c: str) -> int:
        if self.heredoc is not None:
            if c == "\n":
                delim, strip_tabs = self.heredoc
                line = self.line.lstrip("\t") if strip_tabs else self.line
                self.line = ""
                if line == delim:
                    self.heredoc = self.pending_heredocs.pop(0) if self.pending_heredocs else None
            else:
                self.line += c
            return i + 1
        if self.escaped:
            self.escaped = False
            return i + 1
        frame = self.stack[-1]
        kind = frame[0]
        if kind == "single":
            if c == "'":
                self.stack.pop()
            return i + 1
        if kind == "ansi":
            if c == "\\":
                self.escaped = True
            elif c == "'":
                self.stack.pop()
            return i + 1
        if self.comment:
            if c == "\n":
                self.comment = False
                return self._newline(i)
            return i + 1
        if c == "\\":
            self.escaped = True
            return i + 1
        if kind == "expansion":
            if c == "}":
                self.stack.pop()
            return i + 1
        if kind == "backtick":
            if c == "`":
                self.stack.pop()
            return i + 1
        if text.startswith("$(", i):
            self.stack.append(["plain", 0, False])
            return i + 2
        if text.startswith("${", i):
            self.stack.append(["expansion", 0, False])
            return i + 2
        if c == "`":
            self.stack.append(["backtick", 0, False])
            return i + 1
        if kind == "plain" and text.startswith("$'", i):
            self.stack.append(["ansi", 0, False])  # bash's $'…' (bash may be /bin/sh)
            return i + 2
        if kind == "double":
            if c == '"':
                self.stack.pop()
            return i + 1
        # plain
        if c == "'":
            self.stack.append(["single", 0, False])
        elif c == '"':
            self.stack.append(["double", 0, False])
        elif len(self.stack) > 1 and _CASE.match(text, i) and self.prev in _WORD_START:
            frame[2] = True
            return i + 4
        elif c == "(":
            frame[1] += 1
        elif c == ")":
            if frame[1] > 0:
                frame[1] -= 1
            elif len(self.stack) > 1:
                if frame[2]:
                    self.lost = True
                self.stack.pop()
        elif c == "#" and self.prev in _WORD_START:
            self.comment = True
        elif text.startswith("<<", i):
            return self._heredoc_operator(text, i)
        elif c == "\n":
            return self._newline(i)
        return i + 1

    def _newline(self, i: int) -> int:
        if self.pending_heredocs:
            self.heredoc = self.pending_heredocs.pop(0)
        return i + 1

    def _heredoc_operator(self, text: str, i: int) -> int:
        m = re.compile(r"<<(-?)[ \t]*(?:'([^']*)'|\"([^\"]*)\"|\\?([^\s;&|<>()]+))").match(text, i)
        if m is None:
            return i + 2
        delim = next(g for g in m.groups()[1:] if g is not None)
        self.pending_heredocs.append((delim.replace("\\", ""), m.group(1) == "-"))
        return m.end()


def shell_syntax_error(node: ShellCommandNode, shell: str = "/bin/sh") -> str | None:
    """What ``shell -n`` (parse, run nothing) says about the command, each value stood in by a word."""
    text = "".join(p if isinstance(p, str) else "x" for p in node.template.parts)
    try:
        done = subprocess.run(
            [shell, "-n", "-c", text], capture_output=True, text=True, timeout=10, env={}, check=False
        )
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None  # no shell to ask: nothing to say
    if done.returncode == 0:
        return None
    return (done.stderr.strip() or f"exit code {done.returncode}").replace(f"{shell}: ", "", 1)


def shell_command_warnings(defn: WorkflowDefinition, *, syntax: bool = True) -> list[DefinitionIssue]:
    """Warnings about shell commands: each ``${raw(…)}`` (the value runs as shell code) and, with
    ``syntax``, each command ``/bin/sh`` would refuse to parse (it would fail every attempt)."""
    warnings: list[DefinitionIssue] = []
    parsed: dict[str, str | None] = {}  # command text -> what sh said (one shell per distinct command)

    def syntax_problem(step: ShellStep, node: ShellCommandNode) -> str | None:
        if not syntax:
            return None
        if step.command not in parsed:
            if len(parsed) >= MAX_SYNTAX_CHECKS:
                return None
            parsed[step.command] = shell_syntax_error(node)
        return parsed[step.command]

    def walk(steps: list[Step], path: str) -> None:
        for i, step in enumerate(steps):
            step_path = f"{path}[{i}]"
            if isinstance(step, ShellStep):
                node = compile_shell_command(step.command, f"{step_path}.command", [])
                if isinstance(node, ShellCommandNode):
                    problem = syntax_problem(step, node)
                    if problem is not None:
                        warnings.append(
                            DefinitionIssue(f"{step_path}.command", f"/bin/sh cannot parse it: {problem}")
                        )
                    for source in node.raw_paths:
                        warnings.append(
                            DefinitionIssue(
                                f"{step_path}.command",
                                f"${{raw({source})}} is pasted unquoted: a value holding shell syntax "
                                "(';', '$(…)', quotes) runs as commands",
                            )
                        )
            body = step_body(step)
            if body is not None:
                sub = "foreach.steps" if isinstance(step, ForeachStep) else "loop.steps"
                walk(body, f"{step_path}.{sub}")

    walk(defn.steps, "steps")
    return warnings
