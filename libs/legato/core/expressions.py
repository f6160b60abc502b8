"""Expressions inside definitions: compiled value specs and the scoping rules for what they may read.

A *value spec* is how step params, trigger params, signal fields, HTTP bodies... are written: a
literal, a ``"${...}"`` template (strings anywhere, nested lists and maps included), or
``{expr: "..."}`` (a map with the single key ``expr``). A :class:`Scope` says which namespace roots
and names an expression may read where it sits; :func:`check_references` turns violations into
issues ("steps.x is not upstream of y").
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from legato.core.errors import DefinitionIssue
from legato.core.reader import at
from legato.sel import Expression, Limits, SelSyntaxError, compile_expression, compile_template, is_template

INSTANCE_FIELDS = ("id", "workflow_id", "version", "start_time", "trigger", "run_number")
TRIGGER_FIELDS = ("id", "kind", "fire_time")
ITERATION_FIELDS = ("index", "outputs")
STEP_FIELDS = ("outputs", "status")


class ValueNode:
    """A compiled value spec."""

    references: frozenset[tuple[str, ...]] = frozenset()
    uses_clock: bool = False

    @property
    def is_constant(self) -> bool:
        return not self.references and not self.uses_clock

    def evaluate(
        self, env: Mapping[str, Any], limits: Limits | None = None, now: datetime | None = None
    ) -> Any:
        raise NotImplementedError

    def expressions(self) -> list[tuple[str, Expression]]:
        """(path, expression) of every expression inside, for checks."""
        return []


class ConstNode(ValueNode):
    """A value with no expression in it, evaluated to itself (a copy for lists and maps)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def evaluate(
        self, env: Mapping[str, Any], limits: Limits | None = None, now: datetime | None = None
    ) -> Any:
        if isinstance(self.value, (list, dict)):
            return copy.deepcopy(
                self.value
            )  # callers may mutate what they get; the definition must not change
        return self.value


class ExprNode(ValueNode):
    """An ``{expr: …}`` value: a SEL expression, evaluated to its value (any type)."""

    __slots__ = ("expression", "path", "references", "uses_clock")

    def __init__(self, expression: Expression, path: str) -> None:
        self.expression = expression
        self.path = path
        self.references = expression.references
        self.uses_clock = expression.uses_clock

    def evaluate(
        self, env: Mapping[str, Any], limits: Limits | None = None, now: datetime | None = None
    ) -> Any:
        return self.expression.evaluate(env, limits, now=now)

    def expressions(self) -> list[tuple[str, Expression]]:
        return [(self.path, self.expression)]


class TemplateNode(ValueNode):
    """A string with ``${ … }`` parts, evaluated to the string with each part filled in."""

    __slots__ = ("path", "references", "template", "uses_clock")

    def __init__(self, text: str, path: str) -> None:
        self.template = compile_template(text, path=path)
        self.path = path
        self.references = self.template.references
        self.uses_clock = self.template.uses_clock

    def evaluate(
        self, env: Mapping[str, Any], limits: Limits | None = None, now: datetime | None = None
    ) -> Any:
        return self.template.evaluate(env, limits, now=now)

    def expressions(self) -> list[tuple[str, Expression]]:
        return [(self.path, e) for e in self.template.expressions]


class ListNode(ValueNode):
    """A list whose items are value nodes, evaluated item by item."""

    __slots__ = ("items", "references", "uses_clock")

    def __init__(self, items: list[ValueNode]) -> None:
        self.items = items
        self.references = frozenset().union(*(i.references for i in items))
        self.uses_clock = any(i.uses_clock for i in items)

    def evaluate(
        self, env: Mapping[str, Any], limits: Limits | None = None, now: datetime | None = None
    ) -> Any:
        return [item.evaluate(env, limits, now) for item in self.items]

    def expressions(self) -> list[tuple[str, Expression]]:
        return [e for item in self.items for e in item.expressions()]


class MapNode(ValueNode):
    """A map whose values are value nodes, evaluated value by value."""

    __slots__ = ("items", "references", "uses_clock")

    def __init__(self, items: dict[str, ValueNode]) -> None:
        self.items = items
        self.references = frozenset().union(*(i.references for i in items.values()))
        self.uses_clock = any(i.uses_clock for i in items.values())

    def evaluate(
        self, env: Mapping[str, Any], limits: Limits | None = None, now: datetime | None = None
    ) -> Any:
        return {key: item.evaluate(env, limits, now) for key, item in self.items.items()}

    def expressions(self) -> list[tuple[str, Expression]]:
        return [e for item in self.items.values() for e in item.expressions()]


def compile_value(raw: Any, path: str, issues: list[DefinitionIssue]) -> ValueNode:
    """Compile a value spec; syntax errors are appended to ``issues`` (the node then yields null)."""
    try:
        if isinstance(raw, str):
            return TemplateNode(raw, path) if is_template(raw) else ConstNode(raw)
        if isinstance(raw, dict):
            if len(raw) == 1 and "expr" in raw and isinstance(raw["expr"], str):
                expr_path = at(path, "expr")
                return ExprNode(compile_expression(raw["expr"], path=expr_path), expr_path)
            items = {k: compile_value(v, at(path, k), issues) for k, v in raw.items()}
            if all(isinstance(i, ConstNode) for i in items.values()):
                return ConstNode(raw)
            return MapNode(items)
        if isinstance(raw, list):
            elements = [compile_value(v, at(path, i), issues) for i, v in enumerate(raw)]
            if all(isinstance(i, ConstNode) for i in elements):
                return ConstNode(raw)
            return ListNode(elements)
    except SelSyntaxError as exc:
        issues.append(syntax_issue(exc, path))
        return ConstNode(None)
    return ConstNode(raw)


def compile_condition(source: str, path: str, issues: list[DefinitionIssue]) -> Expression | None:
    """Compile a SEL condition or expression; a syntax error becomes an issue and None."""
    try:
        return compile_expression(source, path=path)
    except SelSyntaxError as exc:
        issues.append(syntax_issue(exc, path))
        return None


def syntax_issue(exc: SelSyntaxError, path: str) -> DefinitionIssue:
    """A SEL syntax error as a definition issue at its path."""
    return DefinitionIssue(exc.path or path, exc.describe())


# ---------------------------------------------------------------------------- scopes


@dataclass(frozen=True, slots=True)
class Scope:
    """What an expression may read where it sits."""

    owner: str
    """What reads, for messages: ``step 'load'``, ``trigger 'nightly'``, ``params.end_date``."""
    params: frozenset[str] | None = None
    """Param names visible as ``params.x``; None: no ``params`` here."""
    steps: Mapping[str, frozenset[str] | None] | None = None
    """Visible steps -> their declared outputs (None when undeclared); None: no ``steps`` here."""
    known_steps: frozenset[str] = frozenset()
    """Every step id of the workflow, to tell "not upstream" from "no such step"."""
    signals: frozenset[str] | None = None
    instance: bool = False
    trigger: bool = False
    signal: bool = False
    iteration: frozenset[str] | None = None
    """Body step ids of the enclosing loop (for ``iteration.outputs.<id>``); None: not in a loop."""
    param_hint: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)
    """Root -> why it is unavailable, to explain refusals."""


_UNAVAILABLE = {
    "params": "params are not available here",
    "steps": "step outputs are not available here",
    "signals": "signals.* is only available in signal-trigger params, param expressions and steps that wait_for_signals",
    "signal": "signal.* is only available in the `when` of a signal trigger's signal",
    "instance": "instance.* is not available here",
    "trigger": "trigger.* is only available in trigger params",
    "iteration": "iteration.* is only available in a loop step's while and body",
}


def _close(name: str, options: list[str]) -> str:
    hint = difflib.get_close_matches(name, options, n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def check_references(
    refs: frozenset[tuple[str, ...]], path: str, scope: Scope, issues: list[DefinitionIssue]
) -> None:
    """Append an issue for every reference the scope does not allow."""
    for ref in sorted(refs):
        problem = _reference_problem(ref, scope)
        if problem is not None:
            issues.append(DefinitionIssue(path, problem))


def _reference_problem(ref: tuple[str, ...], scope: Scope) -> str | None:
    root = ref[0]
    dotted = ".".join(ref)
    if root == "params":
        if scope.params is None:
            return f"{dotted}: {scope.extra.get('params', _UNAVAILABLE['params'])}"
        if len(ref) > 1 and ref[1] not in scope.params:
            return f"params.{ref[1]} is not a declared param{_close(ref[1], sorted(scope.params))}{scope.param_hint}"
        return None
    if root == "steps":
        if scope.steps is None:
            return f"{dotted}: {scope.extra.get('steps', _UNAVAILABLE['steps'])}"
        if len(ref) < 2:
            return None
        step_id = ref[1]
        if step_id not in scope.steps:
            if step_id in scope.known_steps:
                return f"steps.{step_id} is not upstream of {scope.owner}"
            return f"steps.{step_id}: no such step{_close(step_id, sorted(scope.known_steps))}"
        if len(ref) > 2 and ref[2] not in STEP_FIELDS:
            return f"steps.{step_id}.{ref[2]}: a step exposes only outputs and status"
        outputs = scope.steps[step_id]
        if len(ref) > 3 and ref[2] == "outputs" and outputs and ref[3] not in outputs:
            return f"steps.{step_id}.outputs.{ref[3]}: step {step_id!r} declares outputs {', '.join(sorted(outputs))}"
        return None
    if root == "signals":
        if scope.signals is None:
            return f"{dotted}: {scope.extra.get('signals', _UNAVAILABLE['signals'])}"
        if len(ref) > 1 and ref[1] not in scope.signals:
            known = ", ".join(sorted(scope.signals)) or "none"
            return f"signals.{ref[1]}: not a signal available to {scope.owner} (available: {known})"
        return None
    if root in ("signal", "instance", "trigger", "iteration"):
        allowed = {"signal": scope.signal, "instance": scope.instance, "trigger": scope.trigger}.get(
            root, scope.iteration is not None
        )
        if not allowed:
            return f"{dotted}: {scope.extra.get(root, _UNAVAILABLE[root])}"
        fields = {"instance": INSTANCE_FIELDS, "trigger": TRIGGER_FIELDS, "iteration": ITERATION_FIELDS}.get(
            root
        )
        if fields is not None and len(ref) > 1 and ref[1] not in fields:
            return f"{root}.{ref[1]}: unknown field ({root} has {', '.join(fields)})"
        if (
            root == "iteration"
            and len(ref) > 2
            and ref[1] == "outputs"
            and ref[2] not in (scope.iteration or ())
        ):
            return f"iteration.outputs.{ref[2]}: {ref[2]!r} is not a step of this loop's body"
        return None
    return f"{dotted}: unknown name"
