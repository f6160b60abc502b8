"""Property tests: whatever users write, SEL raises only its own errors (never a host exception)."""

from __future__ import annotations

import ast
import math
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from legato.sel import FUNCTIONS, METHODS, Limits, SelError, SelEvalError, SelSyntaxError, compile_expression

LIMITS = Limits(max_steps=20_000, max_collection=5_000, max_string=50_000)
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ENV: dict[str, Any] = {
    "params": {
        "n": 7,
        "f": 2.5,
        "s": "héllo",
        "xs": [3, 1, 2],
        "m": {"a": 1, "b": [1, 2]},
        "d": date(2026, 11, 1),
        "t": datetime(2026, 11, 1, 2, 30, tzinfo=UTC),
        "dur": timedelta(hours=1),
        "none": None,
        "nested": {"x": {"y": [{"z": 1}]}},
    },
    "steps": {"a": {"outputs": {"rows": 1}, "status": "succeeded"}},
}


def check(source: str, env: dict[str, Any] = ENV) -> None:
    """Compile and evaluate; only SEL errors may come out, and never an internal one."""
    try:
        expression = compile_expression(source)
    except SelSyntaxError:
        return
    try:
        expression.evaluate(env, LIMITS, now=datetime(2026, 1, 1, tzinfo=UTC))
    except SelError as exc:
        assert not (isinstance(exc, SelEvalError) and exc.internal), f"{source!r} with {env!r}: {exc}"


# ---------------------------------------------------------------------------- random token soup

TOKENS = [
    "params", "steps", "signals", "x", "y", ".", ".n", ".s", ".xs", ".m", ".d", ".t", ".dur", ".none",
    "(", ")", "[", "]", "{", "}", ",", ":", "+", "-", "*", "/", "//", "%", "**", "<", "<=", "==", "!=",
    "&", "|", "^", "~", "<<", ">>", "and", "or", "not", "in", "is", "if", "else", "for", "lambda",
    "0", "1", "2", "-1", "10**6", "1.5", "1e308", "'a'", "''", "'${'", "True", "None", "null", "true",
    "len", "range", "sorted", "str", "int", "float", "sum", "min", "max", "date", "days", "format",
    "json", "parse_json", "split", "join", "replace", "get", "keys", "__class__", "_", "upper",
    "date_range", "now", "today", "add_months", "zip", "dict", "set", "list", "unique", "flatten",
]  # fmt: skip


@SETTINGS
@given(st.lists(st.sampled_from(TOKENS), max_size=24))
def test_random_token_sequences_raise_only_sel_errors(tokens: list[str]) -> None:
    check(" ".join(tokens).replace(" .", "."))


@SETTINGS
@given(st.text(max_size=40))
def test_random_text_raises_only_sel_errors(text: str) -> None:
    check(text)


# ---------------------------------------------------------------------------- random syntax trees

_PATHS = ["params.n", "params.f", "params.s", "params.xs", "params.m", "params.d", "params.t", "params.dur",
          "params.none", "params.m.b", "steps.a.outputs.rows", "x", "params.nested.x.y"]  # fmt: skip


def _const(value: Any) -> ast.expr:
    return ast.Constant(value)


def _path(text: str) -> ast.expr:
    return ast.parse(text, mode="eval").body


_scalars = st.one_of(
    st.integers(-(10**6), 10**6),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.booleans(),
    st.none(),
)
_leaves = st.one_of(_scalars.map(_const), st.sampled_from(_PATHS).map(_path))

_BINOPS = [ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.LShift, ast.RShift, ast.BitOr,
           ast.BitAnd, ast.BitXor, ast.MatMult]  # fmt: skip
_CMPOPS = [ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.Is]
_UNARY = [ast.USub, ast.UAdd, ast.Not, ast.Invert]
_FUNCTIONS = sorted(FUNCTIONS)
_METHODS = [*sorted(METHODS), "__class__", "mro"]


def _comprehension(parts: tuple[ast.expr, ast.expr, ast.expr | None]) -> ast.expr:
    elt, iterable, condition = parts
    generator = ast.comprehension(ast.Name("x", ast.Store()), iterable, [condition] if condition else [], 0)
    return ast.ListComp(elt, [generator])


def _extend(children: st.SearchStrategy[ast.expr]) -> st.SearchStrategy[ast.expr]:
    return st.one_of(
        st.tuples(children, st.sampled_from(_BINOPS), children).map(lambda t: ast.BinOp(t[0], t[1](), t[2])),
        st.tuples(st.sampled_from(_UNARY), children).map(lambda t: ast.UnaryOp(t[0](), t[1])),
        st.tuples(children, st.sampled_from(_CMPOPS), children).map(
            lambda t: ast.Compare(t[0], [t[1]()], [t[2]])
        ),
        st.tuples(st.sampled_from([ast.And, ast.Or]), st.lists(children, min_size=2, max_size=3)).map(
            lambda t: ast.BoolOp(t[0](), t[1])
        ),
        st.tuples(children, children, children).map(lambda t: ast.IfExp(t[0], t[1], t[2])),
        st.lists(children, max_size=4).map(lambda xs: ast.List(xs, ast.Load())),
        st.lists(children, max_size=3).map(lambda xs: ast.Set(xs) if xs else ast.List([], ast.Load())),
        st.lists(st.tuples(children, children), max_size=3).map(
            lambda kv: ast.Dict([k for k, _ in kv], [v for _, v in kv])
        ),
        st.tuples(children, children).map(lambda t: ast.Subscript(t[0], t[1], ast.Load())),
        st.tuples(children, st.one_of(st.none(), children), st.one_of(st.none(), children)).map(
            lambda t: ast.Subscript(t[0], ast.Slice(t[1], t[2], None), ast.Load())
        ),
        st.tuples(children, st.sampled_from(["x", "n", "a", "b", "keys", "__class__"])).map(
            lambda t: ast.Attribute(t[0], t[1], ast.Load())
        ),
        st.tuples(st.sampled_from(_FUNCTIONS), st.lists(children, max_size=3)).map(
            lambda t: ast.Call(ast.Name(t[0], ast.Load()), t[1], [])
        ),
        st.tuples(children, st.sampled_from(_METHODS), st.lists(children, max_size=2)).map(
            lambda t: ast.Call(ast.Attribute(t[0], t[1], ast.Load()), t[2], [])
        ),
        st.tuples(children, children, st.one_of(st.none(), children)).map(_comprehension),
    )


_trees = st.recursive(_leaves, _extend, max_leaves=16)


@SETTINGS
@given(_trees)
def test_random_syntax_trees_raise_only_sel_errors(tree: ast.expr) -> None:
    source = ast.unparse(ast.fix_missing_locations(ast.Expression(tree)))
    check(source)


# ---------------------------------------------------------------------------- library functions on random values

_values = st.recursive(
    st.one_of(
        _scalars,
        st.dates(),
        st.datetimes(timezones=st.just(UTC)),
        st.timedeltas(min_value=timedelta(days=-(10**5)), max_value=timedelta(days=10**5)),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=3), children, max_size=3),
    ),
    max_leaves=8,
)


def _arity(name: str) -> tuple[int, int]:
    params = list(FUNCTIONS[name].signature.parameters.values())
    required = sum(1 for p in params if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD)
    variadic = any(p.kind is p.VAR_POSITIONAL for p in params)
    positional = sum(1 for p in params if p.kind is p.POSITIONAL_OR_KEYWORD)
    return required, (required + 3 if variadic else positional)


@pytest.mark.parametrize("name", _FUNCTIONS)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_library_functions_on_random_arguments_raise_only_sel_errors(name: str, data: st.DataObject) -> None:
    low, high = _arity(name)
    args = data.draw(st.lists(_values, min_size=low, max_size=high))
    as_method = data.draw(st.booleans()) and name in METHODS and bool(args)
    env = {"params": {f"a{i}": v for i, v in enumerate(args)}}
    names = [f"params.a{i}" for i in range(len(args))]
    source = f"{names[0]}.{name}({', '.join(names[1:])})" if as_method else f"{name}({', '.join(names)})"
    check(source, env)


@SETTINGS
@given(
    _values,
    st.sampled_from(["+", "-", "*", "/", "//", "%", "**", "<", "<=", "==", "!=", "in", "&", "|", "<<"]),
    _values,
)
def test_operators_on_random_values_raise_only_sel_errors(left: Any, op: str, right: Any) -> None:
    env = {"params": {"a": left, "b": right}}
    try:
        compile_expression(f"params.a {op} params.b").evaluate(env, LIMITS)
    except SelError as exc:
        assert not (isinstance(exc, SelEvalError) and exc.internal), f"{left!r} {op} {right!r}: {exc}"


_json = st.recursive(
    st.one_of(
        st.integers(-(2**60), 2**60),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=8),
        st.booleans(),
        st.none(),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=12,
)


@SETTINGS
@given(_json)
def test_json_round_trips(value: Any) -> None:
    result = compile_expression("parse_json(json(params.v))").evaluate({"params": {"v": value}})
    assert result == value or (isinstance(value, float) and math.isclose(result, value))


@SETTINGS
@given(st.integers(-(10**9), 10**9), st.integers(-(10**9), 10**9))
def test_small_int_arithmetic_matches_python(a: int, b: int) -> None:
    env = {"params": {"a": a, "b": b}}
    for op in ("+", "-", "*"):
        assert compile_expression(f"params.a {op} params.b").evaluate(env) == eval(f"{a} {op} {b}")
    if b:
        assert compile_expression("params.a // params.b").evaluate(env) == a // b
        assert compile_expression("params.a % params.b").evaluate(env) == a % b
