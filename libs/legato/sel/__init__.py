"""SEL — Legato's sandboxed expression language.

Python-flavoured expressions (literals, arithmetic, comparisons, boolean logic, conditional
expressions, indexing and slicing, list/map/set comprehensions, a fixed function library) that are
parsed once, compiled to closures, and evaluated under a step budget and size caps. Expressions
come from users and signals, so they are untrusted: every failure is a :class:`SelError`.

    >>> compile_expression("params.n * 2").evaluate({"params": {"n": 21}})
    42
"""

from legato.sel.compiler import ROOT_NAMES, Expression, compile_expression
from legato.sel.durations import format_duration, parse_duration_text
from legato.sel.errors import SelError, SelEvalError, SelLimitError, SelSyntaxError
from legato.sel.lib_registry import FUNCTIONS, METHODS
from legato.sel.lib_time import resolve_local, zone
from legato.sel.limits import DEFAULT_LIMITS, Limits
from legato.sel.template import Template, compile_template, is_template
from legato.sel.values import DateRange, type_name

__all__ = [
    "DEFAULT_LIMITS",
    "FUNCTIONS",
    "METHODS",
    "ROOT_NAMES",
    "DateRange",
    "Expression",
    "Limits",
    "SelError",
    "SelEvalError",
    "SelLimitError",
    "SelSyntaxError",
    "Template",
    "compile_expression",
    "compile_template",
    "format_duration",
    "is_template",
    "parse_duration_text",
    "resolve_local",
    "type_name",
    "zone",
]
