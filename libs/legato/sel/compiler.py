"""Compile SEL source into a tree of Python closures.

The source is parsed once with Python's ``ast`` (expression mode), every node is checked against a
whitelist, and each node becomes a closure ``node(ctx) -> value``. No user text ever reaches
``eval``/``exec``; names resolve only to the evaluation namespace's roots, comprehension variables
and the fixed function library; ``a.b`` on a map is a key lookup, never a Python attribute.

Work is paid for without a counter in every node: the expression's node count is charged once
up front, each comprehension iteration charges the node count of its body, and library functions
charge for the elements and characters they touch. That keeps a simple evaluation close to the
cost of the closures themselves while bounding every loop.
"""

from __future__ import annotations

import ast
import difflib
import operator
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any, NoReturn

from legato.sel import lib_data, lib_math, lib_text, lib_time  # noqa: F401  (registers the library)
from legato.sel import operators as ops
from legato.sel.errors import SelError, SelEvalError, SelLimitError, SelSyntaxError
from legato.sel.lib_data import truthy
from legato.sel.lib_registry import FUNCTIONS, METHODS, Function, check_arity
from legato.sel.limits import DEFAULT_LIMITS, Limits
from legato.sel.runtime import Ctx
from legato.sel.values import (
    DateRange,
    a_type,
    check_hashable,
    is_map,
    iterate,
    type_name,
)

Node = Callable[[Ctx], Any]

ROOT_NAMES: frozenset[str] = frozenset(
    {"params", "steps", "signals", "signal", "instance", "iteration", "trigger"}
)
"""Names an expression may start from; which of them are available depends on where it is used."""

_CONSTANT_NAMES: dict[str, Any] = {"true": True, "false": False, "null": None}
_FOLDABLE = (type(None), bool, int, float, date, datetime, timedelta)
_FOLD_MAX_STRING = 1_000

_BINARY: dict[type[ast.operator], ops.BinaryOp] = {
    ast.Add: ops.add,
    ast.Sub: ops.sub,
    ast.Mult: ops.mul,
    ast.Div: ops.truediv,
    ast.FloorDiv: ops.floordiv,
    ast.Mod: ops.mod,
    ast.Pow: ops.power,
    ast.LShift: ops.lshift,
    ast.RShift: ops.rshift,
    ast.BitOr: ops.bitor,
    ast.BitAnd: ops.bitand,
    ast.BitXor: ops.bitxor,
}
_COMPARE: dict[type[ast.cmpop], ops.BinaryOp] = {
    ast.Eq: ops.eq,
    ast.NotEq: ops.ne,
    ast.Lt: ops.lt,
    ast.LtE: ops.le,
    ast.Gt: ops.gt,
    ast.GtE: ops.ge,
    ast.In: ops.in_,
    ast.NotIn: ops.not_in,
}
_SMALL = 1 << 31
_FAST_INT: dict[type[ast.operator], Callable[[int, int], int]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Mod: operator.mod,
    ast.FloorDiv: operator.floordiv,
}
# Comparisons Python may do directly: same-type scalars it compares in constant time, and numbers.
_FAST_COMPARE: dict[Any, Callable[[Any, Any], Any]] = {
    ops.eq: operator.eq,
    ops.ne: operator.ne,
    ops.lt: operator.lt,
    ops.le: operator.le,
    ops.gt: operator.gt,
    ops.ge: operator.ge,
}
_FAST_SAME: frozenset[type] = frozenset({int, float, date, timedelta})  # not datetime: see values.instant
_NUMBERS: frozenset[type] = frozenset({int, float})
_UNARY: dict[type[ast.unaryop], Callable[[Any, Ctx], Any]] = {
    ast.USub: ops.neg,
    ast.UAdd: ops.pos,
    ast.Invert: ops.invert,
}
_REFUSED: dict[type[ast.AST], str] = {
    ast.Lambda: "lambda is not supported",
    ast.NamedExpr: "assignment (:=) is not supported",
    ast.JoinedStr: "f-strings are not supported; use format() or a ${...} template",
    ast.FormattedValue: "f-strings are not supported; use format() or a ${...} template",
    ast.Await: "await is not supported",
    ast.Yield: "yield is not supported",
    ast.YieldFrom: "yield is not supported",
    ast.Starred: "unpacking with * is not supported",
    ast.MatMult: "the @ operator is not supported",
}


def _is_dunder(name: str) -> bool:
    return name.startswith("__") or name.endswith("__")


def _located(exc: SelError, pos: tuple[int, int]) -> SelError:
    if exc.position is None:
        exc.position = pos
    return exc


class Expression:
    """A compiled SEL expression: evaluate it many times, against different namespaces."""

    __slots__ = ("_constant", "_cost", "_nslots", "_root", "path", "references", "source", "uses_clock")

    source: str
    """The expression text."""
    path: str
    """Where the expression sits in a definition (``steps[2].when``); prefixes its errors."""
    references: frozenset[tuple[str, ...]]
    """Paths read from the namespace, e.g. ``("params", "x")``, ``("steps", "a", "outputs", "rows")``."""
    uses_clock: bool
    """True when the result depends on now()/today()."""

    def __init__(
        self,
        source: str,
        path: str,
        root: Node,
        cost: int,
        nslots: int,
        references: frozenset[tuple[str, ...]],
        constant: tuple[Any] | None,
        uses_clock: bool,
    ) -> None:
        self.source = source
        self.path = path
        self._root = root
        self._cost = cost
        self._nslots = nslots
        self.references = references
        self._constant = constant
        self.uses_clock = uses_clock

    @property
    def is_constant(self) -> bool:
        """True when the expression reads nothing and calls no clock: its value is known at compile time."""
        return self._constant is not None

    def evaluate(
        self, env: Mapping[str, Any], limits: Limits | None = None, *, now: datetime | None = None
    ) -> Any:
        """The expression's value in ``env`` (root name -> value); raises only :class:`SelError`.

        ``now`` fixes the clock seen by ``now()``/``today()`` (naive means UTC).
        """
        if now is not None and now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        ctx = Ctx(env, limits or DEFAULT_LIMITS, now, self._nslots)
        ctx.steps = self._cost
        try:
            if self._cost > ctx.max_steps:
                ctx.exhausted()
            return self._root(ctx)
        except SelError as exc:
            exc.located(self.source, self.path)
            raise
        except RecursionError:
            raise SelLimitError(
                "nested too deeply", limit="max_depth", expression=self.source, path=self.path
            ) from None
        except MemoryError:
            raise SelLimitError(
                "out of memory", limit="memory", expression=self.source, path=self.path
            ) from None
        except (
            Exception
        ) as exc:  # a host exception escaping the interpreter is a SEL bug: report, never crash
            raise SelEvalError(
                f"internal error: {type(exc).__name__}: {exc}",
                expression=self.source,
                path=self.path,
                internal=True,
            ) from exc

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


def compile_expression(
    source: str,
    *,
    path: str = "",
    limits: Limits | None = None,
    roots: frozenset[str] = ROOT_NAMES,
) -> Expression:
    """Parse and compile ``source``; raises :class:`SelSyntaxError` naming the position and reason."""
    if not isinstance(source, str):
        raise SelSyntaxError(f"an expression must be text, got {type(source).__name__}", path=path)
    return _Compiler(source, path, limits or DEFAULT_LIMITS, roots).run()


class _Compiler:
    def __init__(self, source: str, path: str, limits: Limits, roots: frozenset[str]) -> None:
        self.source = source
        self.path = path
        self.limits = limits
        self.roots = roots
        self.lines: list[str] = []
        self.lead = 0
        self.depth = 0
        self.scopes: list[dict[str, int]] = []
        self.nslots = 0
        self.costs: list[int] = [0]
        self.refs: set[tuple[str, ...]] = set()
        self.consts: dict[Node, Any] = {}
        self.uses_clock = False

    # ------------------------------------------------------------------ driver

    def fail(self, reason: str, node: ast.AST | None = None) -> NoReturn:
        raise SelSyntaxError(
            reason,
            expression=self.source,
            position=self.pos(node) if node is not None else None,
            path=self.path,
        )

    def pos(self, node: ast.AST) -> tuple[int, int]:
        line = getattr(node, "lineno", 1)
        offset = getattr(node, "col_offset", 0)
        text = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        lead = self.lead if line == 1 else 0
        if text.isascii():
            return line, offset + lead + 1
        return line, len(text.encode("utf-8")[:offset].decode("utf-8", "ignore")) + lead + 1

    def parse(self) -> ast.expr:
        if len(self.source) > self.limits.max_source:
            self.fail(
                f"expression of {len(self.source)} characters exceeds the limit of {self.limits.max_source}"
            )
        if not self.source.strip():
            self.fail("empty expression")
        # Python refuses leading blanks in an expression ("unexpected indent"); SEL tolerates them.
        text = self.source.lstrip(" \t")
        self.lead = len(self.source) - len(text)
        self.lines = text.split("\n")
        try:
            tree = ast.parse(text, mode="eval")
        except SyntaxError as exc:
            line = exc.lineno or 1
            offset = exc.offset or 0
            reason = exc.msg
            if offset <= 0:  # Python reports a premature end at offset 0
                last = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
                offset = len(last) + 1
                if reason == "invalid syntax":
                    reason = "unexpected end of expression"
            position = (line, offset + (self.lead if line == 1 else 0))
            raise SelSyntaxError(
                reason if reason != "invalid syntax" else "invalid syntax",
                expression=self.source,
                position=position,
                path=self.path,
            ) from None
        except (MemoryError, RecursionError):
            self.fail(f"expression nested deeper than {self.limits.max_depth} levels")
        except ValueError as exc:  # NUL bytes, lone surrogates
            self.fail(f"invalid characters in expression: {str(exc)[:80]}")
        return tree.body

    def run(self) -> Expression:
        body = self.parse()
        root = self.compile(body)
        constant = (self.consts[root],) if root in self.consts and not self.uses_clock else None
        return Expression(
            self.source,
            self.path,
            root,
            self.costs[0],
            self.nslots,
            frozenset(self.refs),
            constant,
            self.uses_clock,
        )

    def compile(self, node: ast.AST) -> Node:
        # Depth is checked on the way down, before anything walks a subtree recursively (ast.unparse
        # in messages), so the compiler's own recursion stays within max_depth levels.
        self.depth += 1
        if self.depth > self.limits.max_depth:
            self.fail(f"expression nested deeper than {self.limits.max_depth} levels", node)
        try:
            self.costs[-1] += 1
            refused = _REFUSED.get(type(node))
            if refused is not None:
                self.fail(refused, node)
            handler = _HANDLERS.get(type(node))
            if handler is None:
                self.fail(f"{type(node).__name__} is not allowed in SEL", node)
            return handler(self, node)
        finally:
            self.depth -= 1

    def const(self, value: Any) -> Node:
        def constant(ctx: Ctx) -> Any:
            return value

        self.consts[constant] = value
        return constant

    def fold(self, node: ast.AST, compute: Callable[[Ctx], Any]) -> Node | None:
        """The constant node for ``compute`` when it succeeds at compile time with a small scalar result."""
        try:
            value = compute(Ctx({}, DEFAULT_LIMITS, None, 0))
        except Exception:  # anything that fails now fails again at run time, with the run's limits
            return None
        if isinstance(value, _FOLDABLE) or (type(value) is str and len(value) <= _FOLD_MAX_STRING):
            return self.const(value)
        return None

    # ------------------------------------------------------------------ leaves

    def constant(self, node: ast.Constant) -> Node:
        value: Any = node.value
        t = type(value)
        if t is int:
            if value.bit_length() > self.limits.max_int_bits:
                self.fail(f"integer literal exceeds {self.limits.max_int_bits} bits", node)
        elif t is str:
            if len(value) > self.limits.max_string:
                self.fail("string literal too long", node)
        elif t not in (bool, float, type(None)):
            self.fail(f"{t.__name__} literals are not supported", node)
        return self.const(value)

    def local_slot(self, name: str) -> int | None:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        return None

    def name(self, node: ast.Name) -> Node:
        ident = node.id
        if _is_dunder(ident):
            self.fail(f"name {ident!r}: dunder names are not allowed", node)
        slot = self.local_slot(ident)
        if slot is not None:

            def local(ctx: Ctx) -> Any:
                return ctx.slots[slot]

            return local
        if ident in _CONSTANT_NAMES:
            return self.const(_CONSTANT_NAMES[ident])
        if ident in self.roots:
            self.refs.add((ident,))
            return self.root_lookup(ident, node)
        if ident in FUNCTIONS:
            self.fail(f"{ident!r} is a function: call it, as in {ident}(...)", node)
        hint = difflib.get_close_matches(ident, sorted(self.roots), n=1)
        self.fail(
            f"unknown name {ident!r}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; expressions start from {', '.join(sorted(self.roots))}",
            node,
        )

    def root_lookup(self, root: str, node: ast.AST) -> Node:
        pos = self.pos(node)

        def lookup(ctx: Ctx) -> Any:
            try:
                return ctx.env[root]
            except KeyError:
                raise SelEvalError(f"{root!r} is not available here", position=pos) from None

        return lookup

    # ------------------------------------------------------------------ field and index access

    def static_chain(self, node: ast.expr) -> tuple[str, list[str]] | None:
        """``params.x["y"].z`` -> ("params", ["x", "y", "z"]) when the chain is fixed and starts at a root."""
        keys: list[str] = []
        while True:
            if len(keys) >= self.limits.max_depth:
                self.fail(f"expression nested deeper than {self.limits.max_depth} levels", node)
            if isinstance(node, ast.Attribute):
                if _is_dunder(node.attr):
                    self.fail(f"field {node.attr!r}: dunder names are not allowed", node)
                keys.append(node.attr)
                node = node.value
            elif (
                isinstance(node, ast.Subscript)
                and isinstance(node.slice, ast.Constant)
                and type(node.slice.value) is str
            ):
                keys.append(node.slice.value)
                node = node.value
            elif isinstance(node, ast.Name) and node.id in self.roots and self.local_slot(node.id) is None:
                keys.reverse()
                return node.id, keys
            else:
                return None

    def attribute(self, node: ast.Attribute) -> Node:
        if _is_dunder(node.attr):
            self.fail(f"field {node.attr!r}: dunder names are not allowed", node)
        chain = self.static_chain(node)
        if chain is not None:
            return self.path_lookup(chain[0], chain[1], node)
        value = self.compile(node.value)
        attr = node.attr
        pos = self.pos(node)
        shown = _shown(node.value)

        def field(ctx: Ctx) -> Any:
            v = value(ctx)
            if v.__class__ is dict:
                try:
                    return v[attr]
                except KeyError:
                    pass
            raise _field_error(v, attr, shown, pos)

        return field

    def path_lookup(self, root: str, keys: list[str], node: ast.AST) -> Node:
        """A fixed path from a root: a fast path for dicts, precise errors otherwise."""
        self.refs.add((root, *keys))
        self.costs[-1] += len(keys)
        pos = self.pos(node)
        shown = [root]
        for k in keys:
            shown.append(f"{shown[-1]}.{k}" if k.isidentifier() else f"{shown[-1]}[{k!r}]")

        def slow(ctx: Ctx) -> Any:
            try:
                v = ctx.env[root]
            except KeyError:
                raise SelEvalError(f"{root!r} is not available here", position=pos) from None
            for i, k in enumerate(keys):
                if is_map(v):
                    try:
                        v = v[k]
                        continue
                    except KeyError:
                        pass
                raise _field_error(v, k, shown[i], pos)
            return v

        if len(keys) == 1:
            k1 = keys[0]

            def lookup1(ctx: Ctx) -> Any:
                try:
                    v = ctx.env[root]
                    if v.__class__ is dict:
                        return v[k1]
                except KeyError:
                    pass
                return slow(ctx)

            return lookup1
        if len(keys) == 2:
            k1, k2 = keys

            def lookup2(ctx: Ctx) -> Any:
                try:
                    v = ctx.env[root]
                    if v.__class__ is dict:
                        v = v[k1]
                        if v.__class__ is dict:
                            return v[k2]
                except KeyError:
                    pass
                return slow(ctx)

            return lookup2
        fixed = tuple(keys)

        def lookup(ctx: Ctx) -> Any:
            try:
                v = ctx.env[root]
                for k in fixed:
                    if v.__class__ is not dict:
                        return slow(ctx)
                    v = v[k]
                return v
            except KeyError:
                return slow(ctx)

        return lookup

    def subscript(self, node: ast.Subscript) -> Node:
        chain = self.static_chain(node)
        if chain is not None:
            return self.path_lookup(chain[0], chain[1], node)
        value = self.compile(node.value)
        pos = self.pos(node)
        shown = _shown(node.value)
        if isinstance(node.slice, ast.Slice):
            parts = [
                self.compile(p) if p is not None else None
                for p in (node.slice.lower, node.slice.upper, node.slice.step)
            ]

            def sliced(ctx: Ctx) -> Any:
                v = value(ctx)
                bounds = [p(ctx) if p is not None else None for p in parts]
                try:
                    return _slice(v, bounds, ctx)
                except SelError as exc:
                    raise _located(exc, pos) from None

            return sliced
        key = self.compile(node.slice)

        def index(ctx: Ctx) -> Any:
            v = value(ctx)
            k = key(ctx)
            if v.__class__ is dict:
                try:
                    return v[k]
                except (KeyError, TypeError):
                    pass
            return _index(v, k, shown, pos)

        return index

    # ------------------------------------------------------------------ operators

    def binop(self, node: ast.BinOp) -> Node:
        op = _BINARY.get(type(node.op))
        if op is None:
            self.fail(
                _REFUSED.get(type(node.op), f"operator {type(node.op).__name__} is not supported"), node
            )
        left = self.compile(node.left)
        right = self.compile(node.right)
        pos = self.pos(node)
        fast = _FAST_INT.get(type(node.op))
        binary: Node
        if fast is not None:
            # small ints (< 2**31) cannot overflow max_int_bits (>= 64): skip the operator's checks
            divides = isinstance(node.op, (ast.Mod, ast.FloorDiv))

            def binary(ctx: Ctx) -> Any:
                a = left(ctx)
                b = right(ctx)
                if (
                    a.__class__ is int
                    and b.__class__ is int
                    and -_SMALL < a < _SMALL
                    and -_SMALL < b < _SMALL
                    and (b or not divides)
                ):
                    return fast(a, b)
                try:
                    return op(a, b, ctx)
                except SelError as exc:
                    raise _located(exc, pos) from None

        else:

            def binary(ctx: Ctx) -> Any:
                a = left(ctx)
                b = right(ctx)
                try:
                    return op(a, b, ctx)
                except SelError as exc:
                    raise _located(exc, pos) from None

        if left in self.consts and right in self.consts:
            return self.fold(node, binary) or binary
        return binary

    def unaryop(self, node: ast.UnaryOp) -> Node:
        operand = self.compile(node.operand)
        pos = self.pos(node)
        if isinstance(node.op, ast.Not):

            def negation(ctx: Ctx) -> bool:
                v = operand(ctx)
                if v is True:
                    return False
                if v is False:
                    return True
                return not truthy(v)

            return negation
        op = _UNARY[type(node.op)]

        def unary(ctx: Ctx) -> Any:
            try:
                return op(operand(ctx), ctx)
            except SelError as exc:
                raise _located(exc, pos) from None

        if operand in self.consts:
            return self.fold(node, unary) or unary
        return unary

    def boolop(self, node: ast.BoolOp) -> Node:
        parts = [self.compile(v) for v in node.values]
        if isinstance(node.op, ast.And):

            def conjunction(ctx: Ctx) -> Any:
                v: Any = True
                for part in parts:
                    v = part(ctx)
                    if not (v is True or (v is not False and truthy(v))):
                        return v
                return v

            return conjunction

        def disjunction(ctx: Ctx) -> Any:
            v: Any = False
            for part in parts:
                v = part(ctx)
                if v is True or (v is not False and truthy(v)):
                    return v
            return v

        return disjunction

    def compare(self, node: ast.Compare) -> Node:
        pos = self.pos(node)
        left = self.compile(node.left)
        steps: list[tuple[Any, Node]] = []
        for cmp, comparator in zip(node.ops, node.comparators, strict=True):
            if isinstance(cmp, (ast.Is, ast.IsNot)):
                if not (
                    (
                        isinstance(comparator, ast.Constant)
                        and any(comparator.value is c for c in (None, True, False))
                    )
                    or (isinstance(comparator, ast.Name) and comparator.id in _CONSTANT_NAMES)
                ):
                    self.fail("'is' only compares with None, True or False; use == instead", comparator)
                target = (
                    comparator.value
                    if isinstance(comparator, ast.Constant)
                    else _CONSTANT_NAMES[comparator.id]
                )
                negate = isinstance(cmp, ast.IsNot)
                self.costs[-1] += 1

                def identity(a: Any, b: Any, ctx: Ctx, _t: Any = target, _n: bool = negate) -> bool:
                    return (a is _t) != _n

                steps.append((identity, self.const(target)))
            else:
                steps.append((_COMPARE[type(cmp)], self.compile(comparator)))
        if len(steps) == 1:
            op, right = steps[0]
            fast = _FAST_COMPARE.get(op)

            def comparison(ctx: Ctx) -> bool:
                a = left(ctx)
                b = right(ctx)
                try:
                    if fast is not None:
                        ca = a.__class__
                        cb = b.__class__
                        if (ca is cb and ca in _FAST_SAME) or (ca in _NUMBERS and cb in _NUMBERS):
                            return bool(fast(a, b))
                        if ca is str and cb is str and (len(a) <= 4096 or len(b) <= 4096):
                            return bool(fast(a, b))
                    return bool(op(a, b, ctx))
                except SelError as exc:
                    raise _located(exc, pos) from None
                except TypeError:  # naive vs aware datetimes from the host
                    raise SelEvalError(
                        f"cannot compare {type_name(a)} with {type_name(b)} (naive and aware datetimes?)",
                        position=pos,
                    ) from None

            return comparison

        def chained(ctx: Ctx) -> bool:
            a = left(ctx)
            try:
                for op, right in steps:
                    b = right(ctx)
                    if not op(a, b, ctx):
                        return False
                    a = b
            except SelError as exc:
                raise _located(exc, pos) from None
            return True

        return chained

    def ifexp(self, node: ast.IfExp) -> Node:
        test = self.compile(node.test)
        body = self.compile(node.body)
        orelse = self.compile(node.orelse)

        def conditional(ctx: Ctx) -> Any:
            v = test(ctx)
            if v is True or (v is not False and truthy(v)):
                return body(ctx)
            return orelse(ctx)

        return conditional

    # ------------------------------------------------------------------ literals

    def list_literal(self, node: ast.List | ast.Tuple) -> Node:
        items = [self.compile(e) for e in node.elts]

        def make_list(ctx: Ctx) -> list[Any]:
            return [item(ctx) for item in items]

        return make_list

    def set_literal(self, node: ast.Set) -> Node:
        items = [self.compile(e) for e in node.elts]
        pos = self.pos(node)

        def make_set(ctx: Ctx) -> set[Any]:
            values = [item(ctx) for item in items]
            try:
                for v in values:
                    check_hashable(v, "a set item")
            except SelError as exc:
                raise _located(exc, pos) from None
            return set(values)

        return make_set

    def dict_literal(self, node: ast.Dict) -> Node:
        pairs: list[tuple[Node, Node]] = []
        for k, v in zip(node.keys, node.values, strict=True):
            if k is None:
                self.fail("unpacking with ** is not supported; use merge()", v)
            pairs.append((self.compile(k), self.compile(v)))
        pos = self.pos(node)

        def make_dict(ctx: Ctx) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for k, v in pairs:
                key = k(ctx)
                if key.__class__ is not str:
                    raise SelEvalError(f"map keys must be strings, got {type_name(key)}", position=pos)
                out[key] = v(ctx)
            return out

        return make_dict

    # ------------------------------------------------------------------ comprehensions

    def bind_target(self, target: ast.expr, scope: dict[str, int]) -> Callable[[Ctx, Any], None]:
        """Slots for a loop target (a name, or a flat tuple of names) and the function that fills them."""
        names = [target] if isinstance(target, ast.Name) else getattr(target, "elts", None)
        if names is None or not all(isinstance(n, ast.Name) for n in names):
            self.fail("a comprehension variable must be a name or a tuple of names", target)
        slots = []
        for n in names:
            assert isinstance(n, ast.Name)
            if _is_dunder(n.id):
                self.fail(f"name {n.id!r}: dunder names are not allowed", n)
            if n.id in self.roots or n.id in _CONSTANT_NAMES:
                self.fail(f"{n.id!r} cannot be used as a comprehension variable", n)
            scope[n.id] = self.nslots
            slots.append(self.nslots)
            self.nslots += 1
        if isinstance(target, ast.Name):
            slot = slots[0]

            def assign(ctx: Ctx, item: Any) -> None:
                ctx.slots[slot] = item

            return assign
        count = len(slots)
        pos = self.pos(target)

        def unpack(ctx: Ctx, item: Any) -> None:
            if item.__class__ not in (list, tuple) or len(item) != count:
                raise SelEvalError(f"cannot unpack {a_type(item)} into {count} names", position=pos)
            for slot, value in zip(slots, item, strict=True):
                ctx.slots[slot] = value

        return unpack

    def comprehension(
        self, node: ast.ListComp | ast.GeneratorExp | ast.SetComp | ast.DictComp, kind: str
    ) -> Node:
        gens = node.generators
        if any(g.is_async for g in gens):
            self.fail("async comprehensions are not supported", node)
        pos = self.pos(node)
        first_iter = self.compile(gens[0].iter)
        scope: dict[str, int] = {}
        self.scopes.append(scope)
        levels: list[tuple[Node, Callable[[Ctx, Any], None], list[Node], int]] = []
        iterable = first_iter
        self.costs.append(1)
        for i, gen in enumerate(gens):
            assign = self.bind_target(gen.target, scope)
            conds = [self.compile(c) for c in gen.ifs]
            if i + 1 < len(gens):
                next_iter = self.compile(gens[i + 1].iter)
                levels.append((iterable, assign, conds, self.costs.pop()))
                self.costs.append(1)
                iterable = next_iter
        emit: Callable[[Ctx, Any], None]
        fresh: Callable[[], Any]
        if isinstance(node, ast.DictComp):
            key_node = self.compile(node.key)
            value_node = self.compile(node.value)

            def emit_dict(ctx: Ctx, out: Any) -> None:
                key = key_node(ctx)
                if key.__class__ is not str:
                    raise SelEvalError(f"map keys must be strings, got {type_name(key)}")
                out[key] = value_node(ctx)

            emit, fresh = emit_dict, dict
        else:
            elt = self.compile(node.elt)
            if kind == "set":

                def emit_set(ctx: Ctx, out: Any) -> None:
                    value = elt(ctx)
                    check_hashable(value, "a set item")
                    out.add(value)

                emit, fresh = emit_set, set
            else:

                def emit_list(ctx: Ctx, out: Any) -> None:
                    out.append(elt(ctx))

                emit, fresh = emit_list, list
        levels.append((iterable, assign, conds, self.costs.pop()))
        self.scopes.pop()

        single = levels[0] if len(levels) == 1 else None
        if single is not None and kind == "list" and not single[2] and isinstance(gens[0].target, ast.Name):
            source_node, _, _, cost = single
            slot = scope[gens[0].target.id]
            element = elt

            def list_comprehension(ctx: Ctx) -> list[Any]:
                try:
                    seq = iterate(source_node(ctx), ctx)
                    out: list[Any] = []
                    append = out.append
                    slots = ctx.slots
                    cap = ctx.limits.max_collection
                    for item in seq:
                        ctx.steps += cost
                        if ctx.steps > ctx.max_steps:
                            ctx.exhausted()
                        slots[slot] = item
                        append(element(ctx))
                        if len(out) > cap:
                            ctx.check_collection(len(out))
                    return out
                except SelError as exc:
                    raise _located(exc, pos) from None

            return list_comprehension

        depth = len(levels)

        def walk(ctx: Ctx, i: int, out: Any) -> None:
            source_node, assign, conds, cost = levels[i]
            seq = iterate(source_node(ctx), ctx)
            cap = ctx.limits.max_collection
            last = i + 1 == depth
            for item in seq:
                ctx.steps += cost
                if ctx.steps > ctx.max_steps:
                    ctx.exhausted()
                assign(ctx, item)
                for cond in conds:
                    v = cond(ctx)
                    if not (v is True or (v is not False and truthy(v))):
                        break
                else:
                    if not last:
                        walk(ctx, i + 1, out)
                    else:
                        emit(ctx, out)
                    if len(out) > cap:
                        ctx.check_collection(len(out))

        def comprehension(ctx: Ctx) -> Any:
            out: Any = fresh()
            try:
                walk(ctx, 0, out)
            except SelError as exc:
                raise _located(exc, pos) from None
            return out

        return comprehension

    # ------------------------------------------------------------------ calls

    def call(self, node: ast.Call) -> Node:
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                self.fail("unpacking with * is not supported", arg)
        for kw in node.keywords:
            if kw.arg is None:
                self.fail("unpacking with ** is not supported", kw.value)
            if _is_dunder(kw.arg):
                self.fail(f"argument {kw.arg!r}: dunder names are not allowed", kw.value)
        func = node.func
        if isinstance(func, ast.Name):
            return self.function_call(node, func)
        if isinstance(func, ast.Attribute):
            return self.method_call(node, func)
        self.compile(func)  # report what is wrong inside first (a lambda, a dunder...)
        self.fail("only library functions and methods can be called", func)

    def function_call(self, node: ast.Call, func: ast.Name) -> Node:
        name = func.id
        if _is_dunder(name):
            self.fail(f"name {name!r}: dunder names are not allowed", func)
        fn = FUNCTIONS.get(name)
        if fn is None:
            hint = difflib.get_close_matches(name, sorted(FUNCTIONS), n=1)
            self.fail(f"unknown function {name!r}" + (f" (did you mean {hint[0]}()?)" if hint else ""), func)
        keywords = [kw.arg for kw in node.keywords if kw.arg is not None]
        problem = check_arity(fn, len(node.args), keywords)
        if problem is not None:
            self.fail(f"{name}(): {problem}", node)
        if not fn.pure:
            self.uses_clock = True
        args = [self.compile(a) for a in node.args]
        kwargs = {kw.arg: self.compile(kw.value) for kw in node.keywords if kw.arg is not None}
        call = _call_node(fn, args, kwargs, self.pos(node))
        if fn.pure and all(a in self.consts for a in args) and all(v in self.consts for v in kwargs.values()):
            return self.fold(node, call) or call
        return call

    def method_call(self, node: ast.Call, func: ast.Attribute) -> Node:
        method = func.attr
        if _is_dunder(method):
            self.fail(f"method {method!r}: dunder names are not allowed", func)
        receiver = self.compile(func.value)  # problems inside the receiver (a dunder...) come first
        table = METHODS.get(method)
        if table is None:
            hint = difflib.get_close_matches(method, sorted(METHODS), n=1)
            self.fail(
                f"unknown method .{method}()" + (f" (did you mean .{hint[0]}()?)" if hint else ""), func
            )
        keywords = [kw.arg for kw in node.keywords if kw.arg is not None]
        # the same method name can take different arguments per receiver type (", ".join(xs) vs xs.join(", "))
        problems = {kind: check_arity(fn, len(node.args) + 1, keywords) for kind, fn in table.items()}
        if all(p is not None for p in problems.values()):
            self.fail(f".{method}(): {next(iter(problems.values()))}", node)
        args = [self.compile(a) for a in node.args]
        kwargs = {kw.arg: self.compile(kw.value) for kw in node.keywords if kw.arg is not None}
        pos = self.pos(node)
        kinds = ", ".join(sorted(table))

        def method_node(ctx: Ctx) -> Any:
            recv = receiver(ctx)
            kind = type_name(recv)
            fn = table.get(kind)
            if fn is None:
                raise SelEvalError(
                    f".{method}() is not a method of {kind} (it applies to: {kinds})", position=pos
                )
            if problems[kind] is not None:
                raise SelEvalError(f".{method}() on a {kind}: {problems[kind]}", position=pos)
            values = [a(ctx) for a in args]
            named = {k: v(ctx) for k, v in kwargs.items()}
            try:
                return fn.impl(ctx, recv, *values, **named)
            except SelError as exc:
                raise _located(exc, pos) from None

        return method_node


def _list_comprehension(compiler: _Compiler, node: ast.ListComp | ast.GeneratorExp) -> Node:
    return compiler.comprehension(node, "list")


def _set_comprehension(compiler: _Compiler, node: ast.SetComp) -> Node:
    return compiler.comprehension(node, "set")


def _dict_comprehension(compiler: _Compiler, node: ast.DictComp) -> Node:
    return compiler.comprehension(node, "dict")


# One table for all compilers: building it per compile cost more than parsing a short expression.
_HANDLERS: dict[type[ast.AST], Callable[[_Compiler, Any], Node]] = {
    ast.Constant: _Compiler.constant,
    ast.Name: _Compiler.name,
    ast.Attribute: _Compiler.attribute,
    ast.Subscript: _Compiler.subscript,
    ast.BinOp: _Compiler.binop,
    ast.UnaryOp: _Compiler.unaryop,
    ast.BoolOp: _Compiler.boolop,
    ast.Compare: _Compiler.compare,
    ast.IfExp: _Compiler.ifexp,
    ast.List: _Compiler.list_literal,
    ast.Tuple: _Compiler.list_literal,
    ast.Set: _Compiler.set_literal,
    ast.Dict: _Compiler.dict_literal,
    ast.ListComp: _list_comprehension,
    ast.GeneratorExp: _list_comprehension,
    ast.SetComp: _set_comprehension,
    ast.DictComp: _dict_comprehension,
    ast.Call: _Compiler.call,
}


def _call_node(fn: Function, args: list[Node], kwargs: dict[str, Node], pos: tuple[int, int]) -> Node:
    """A call closure, specialised for the common small arities (no list building per call)."""
    impl = fn.impl
    if not kwargs and len(args) == 0:

        def call0(ctx: Ctx) -> Any:
            try:
                return impl(ctx)
            except SelError as exc:
                raise _located(exc, pos) from None

        return call0
    if not kwargs and len(args) == 1:
        a0 = args[0]

        def call1(ctx: Ctx) -> Any:
            v0 = a0(ctx)
            try:
                return impl(ctx, v0)
            except SelError as exc:
                raise _located(exc, pos) from None

        return call1
    if not kwargs and len(args) == 2:
        a0, a1 = args

        def call2(ctx: Ctx) -> Any:
            v0 = a0(ctx)
            v1 = a1(ctx)
            try:
                return impl(ctx, v0, v1)
            except SelError as exc:
                raise _located(exc, pos) from None

        return call2
    names = list(kwargs)
    values = list(kwargs.values())

    def call(ctx: Ctx) -> Any:
        positional = [a(ctx) for a in args]
        named = {k: v(ctx) for k, v in zip(names, values, strict=True)}
        try:
            return impl(ctx, *positional, **named)
        except SelError as exc:
            raise _located(exc, pos) from None

    return call


# ---------------------------------------------------------------------------- access helpers


def _shown(node: ast.expr) -> str:
    text = ast.unparse(node)
    return text if len(text) <= 60 else text[:57] + "..."


def _field_error(value: Any, key: Any, shown: str, pos: tuple[int, int]) -> SelEvalError:
    if is_map(value):
        known = [str(k) for k in list(value)[:8]]
        more = ", ..." if len(value) > 8 else ""
        has = f" (it has: {', '.join(known)}{more})" if known else " (it is empty)"
        return SelEvalError(f"key {key!r} not found in {shown}{has}", position=pos)
    return SelEvalError(
        f"cannot read {key!r} from {shown}: it is {a_type(value)}, and only maps have fields",
        position=pos,
    )


_INDEXABLE = (list, tuple, str, range, DateRange)


def _index(value: Any, key: Any, shown: str, pos: tuple[int, int]) -> Any:
    if is_map(value):
        if type(key) not in (str, int, float, bool, type(None), date, datetime, timedelta):
            raise SelEvalError(f"a map key must be a scalar, got {type_name(key)}", position=pos)
        try:
            return value[key]
        except KeyError:
            raise _field_error(value, key, shown, pos) from None
    if isinstance(value, _INDEXABLE) and type(value) in _INDEXABLE:
        if type(key) is not int:
            raise SelEvalError(
                f"an index into {a_type(value)} must be an int, got {type_name(key)}", position=pos
            )
        try:
            return value[key]
        except (IndexError, OverflowError):
            try:
                size = str(len(value))
            except OverflowError:
                size = "many"
            raise SelEvalError(f"index {key} out of range for {shown} ({size} items)", position=pos) from None
    raise SelEvalError(f"cannot index {a_type(value)} ({shown})", position=pos)


def _slice(value: Any, bounds: list[Any], ctx: Ctx) -> Any:
    for b in bounds:
        if b is not None and type(b) is not int:
            raise SelEvalError(f"slice bounds must be ints, got {type_name(b)}")
    if bounds[2] == 0:
        raise SelEvalError("slice step must not be zero")
    t = type(value)
    if t not in _INDEXABLE:
        raise SelEvalError(f"cannot slice {a_type(value)}")
    picked = slice(*bounds)
    if t is range or t is DateRange:
        return value[picked]  # lazy: nothing materialised
    size = len(range(len(value))[picked])
    if t is str:
        ctx.check_string(size)
    else:
        ctx.check_collection(size)
    return value[picked]


__all__ = ["ROOT_NAMES", "Expression", "compile_expression"]
