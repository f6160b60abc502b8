"""Hostile and runaway SEL expressions, each with the outcome it must end in.

An entry is ``(source, outcome)`` where the outcome is the SelError subclass it must raise, with
an optional limit name (``max_steps``, ``max_string``...) or a fragment of the reason, or
``Value(x)`` for the few hostile-looking inputs that must simply evaluate to ``x`` quickly.
The namespace (:func:`hostile_env`) carries hostile *data* too: deep nesting, self-reference,
aliasing, and large lists, as signals and step outputs could.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from legato.sel import SelError, SelEvalError, SelLimitError, SelSyntaxError


@dataclass(frozen=True)
class Value:
    value: Any


@dataclass(frozen=True)
class Fails:
    error: type[SelError]
    detail: str = ""
    """A limit name (for SelLimitError) or a fragment of the reason."""


SYNTAX = Fails(SelSyntaxError)
DUNDER = Fails(SelSyntaxError, "dunder names are not allowed")
BUDGET = Fails(SelLimitError, "max_steps")
STRING = Fails(SelLimitError, "max_string")
COLLECTION = Fails(SelLimitError, "max_collection")
INT_BITS = Fails(SelLimitError, "max_int_bits")
DEPTH = Fails(SelLimitError, "max_depth")
NESTED = Fails(SelSyntaxError, "nested deeper than")
EVAL = Fails(SelEvalError)


def _deep_list(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def _cycle() -> list[Any]:
    cycle: list[Any] = [1]
    cycle.append(cycle)
    return cycle


def _cyclic_map() -> dict[str, Any]:
    loop: dict[str, Any] = {"name": "loop"}
    loop["self"] = loop
    return loop


def hostile_env() -> dict[str, Any]:
    aliased: list[Any] = [[0] * 1000] * 1000
    return {
        "params": {
            "deep": _deep_list(10_000),
            "deep2": _deep_list(10_000),
            "loop": _cycle(),
            "loop2": _cycle(),
            "map_loop": _cyclic_map(),
            "aliased": aliased,
            "aliased2": [[0] * 1000] * 1000,
            "big": list(range(1_000_000)),
            "big_text": "x" * 1_000_000,
            "n": 10,
        },
        "steps": {"a": {"outputs": {"rows": 1}, "status": "succeeded"}},
    }


CORPUS: list[tuple[str, Any]] = [
    # -- escapes through attributes, dunders and Python builtins ------------------------------
    ("().__class__", DUNDER),
    ("''.__class__.__mro__[1].__subclasses__()", DUNDER),
    ("params.__class__", DUNDER),
    ("params.__dict__", DUNDER),
    ("[].__class__.__base__", DUNDER),
    ("len.__self__", DUNDER),
    ("params.get.__globals__", DUNDER),
    ("params.x.__init__.__globals__['os']", DUNDER),
    ("(1).__add__(2)", DUNDER),
    ("__import__('os').system('id')", DUNDER),
    ("__builtins__", DUNDER),
    ("[x for x in ().__class__.__bases__]", DUNDER),
    ("params.__\uff43\uff4c\uff41\uff53\uff53__", DUNDER),  # fullwidth "class": NFKC makes it __class__
    ("get(params, '__class__', 1)", Value(1)),  # a key, not an attribute: just missing
    ("params['__class__']", Fails(SelEvalError, "key '__class__' not found")),
    ("format('{0.__class__}', params)", Fails(SelEvalError, "unsupported field")),
    ("format('{0[0]}', params.loop)", Fails(SelEvalError, "unsupported field")),
    ("'{.__class__}'.format(1)", Fails(SelEvalError, "unsupported field")),
    ("getattr(params, 'x')", Fails(SelSyntaxError, "unknown function 'getattr'")),
    ("eval('1')", Fails(SelSyntaxError, "unknown function 'eval'")),
    ("exec('x = 1')", Fails(SelSyntaxError, "unknown function 'exec'")),
    ("compile('1', '', 'eval')", Fails(SelSyntaxError, "unknown function 'compile'")),
    ("open('/etc/passwd')", Fails(SelSyntaxError, "unknown function 'open'")),
    ("globals()", Fails(SelSyntaxError, "unknown function 'globals'")),
    ("locals()", Fails(SelSyntaxError, "unknown function 'locals'")),
    ("vars(params)", Fails(SelSyntaxError, "unknown function 'vars'")),
    ("breakpoint()", Fails(SelSyntaxError, "unknown function 'breakpoint'")),
    ("input()", Fails(SelSyntaxError, "unknown function 'input'")),
    ("print(1)", Fails(SelSyntaxError, "unknown function 'print'")),
    ("import os", SYNTAX),
    ("x = 1", SYNTAX),
    ("lambda: 0", Fails(SelSyntaxError, "lambda")),
    ("(lambda: 0)()", Fails(SelSyntaxError, "lambda")),
    ("sorted(params.big, key=lambda x: -x)", Fails(SelSyntaxError, "lambda")),
    ("(y := 1)", Fails(SelSyntaxError, "assignment")),
    ("f'{params}'", Fails(SelSyntaxError, "f-strings")),
    ("f'{params!r:>{10**9}}'", Fails(SelSyntaxError, "f-strings")),
    ("[*params.big]", Fails(SelSyntaxError, "unpacking")),
    ("{**params}", Fails(SelSyntaxError, "unpacking")),
    ("(yield 1)", SYNTAX),
    ("await params", Fails(SelSyntaxError, "await")),
    ("str.join", Fails(SelSyntaxError, "'str' is a function")),
    ("type(params).mro()", Fails(SelSyntaxError, "unknown method .mro()")),
    ("params.keys.__func__", DUNDER),
    ("'%s' % params", Fails(SelEvalError, "'%' formatting is not supported")),
    ("'%*d' % (10**9, 1)", Fails(SelEvalError, "'%' formatting is not supported")),
    ("params.x.y()", Fails(SelSyntaxError, "unknown method .y()")),
    ("re.match('a', 'b')", Fails(SelSyntaxError, "unknown name 're'")),
    ("matches('(a+)+$', 'a' * 30 + '!')", Fails(SelSyntaxError, "unknown function 'matches'")),
    ("'aaaa'.match('(a*)*b')", Fails(SelSyntaxError, "unknown method .match()")),
    ("now('../../etc/passwd')", Fails(SelEvalError, "invalid time zone")),
    ("now('/etc/localtime')", Fails(SelEvalError, "invalid time zone")),
    ("now('Europe/' + 'a' * 100000)", Fails(SelEvalError, "invalid time zone")),
    # -- huge ranges ---------------------------------------------------------------------------
    ("list(range(10**9))", COLLECTION),
    ("[i for i in range(10**12)]", BUDGET),
    ("sum(range(10**12))", BUDGET),
    ("max(range(10**18))", BUDGET),
    ("set(range(10**9))", COLLECTION),
    ("sorted(range(10**7))", BUDGET),
    ("any(range(10**9))", BUDGET),
    ("enumerate(range(10**7))", BUDGET),
    ("zip(range(10**7), range(10**7))", BUDGET),
    ("chunk(range(10**7), 1)", BUDGET),
    ("unique(range(10**7))", BUDGET),
    ("flatten([range(10**7)])", BUDGET),
    ("reversed(list(range(10**6)))", COLLECTION),
    ("list(date_range(date('0001-01-01'), date('9999-12-31')))", COLLECTION),
    ("[d for d in date_range(date('0001-01-01'), date('9999-12-31'))]", BUDGET),
    ("len(range(10**30))", Fails(SelEvalError, "range too long")),
    ("1.5 in range(10**18)", Value(False)),
    ("'x' in range(10**18)", Value(False)),
    ("10**17 in range(0, 10**18, 7)", Value(False)),
    # -- multiplication and growth bombs -------------------------------------------------------
    ("'%s' * 10**9", STRING),
    ("'a' * 10**9", STRING),
    ("10**9 * 'a'", STRING),
    ("[0] * 10**9", COLLECTION),
    ("[[0] * 10**5] * 10**5", BUDGET),  # the inner list alone costs the whole budget
    ("[[0] * 1000] * 10**6", COLLECTION),
    ("('a' * 999999) + 'bb'", STRING),
    ("repeat('ab', 10**7)", STRING),
    ("pad_left('', 10**9)", STRING),
    ("zfill('1', 10**8)", STRING),
    ("join(['x' * 100000] * 100, '')", STRING),
    ("replace('a' * 100000, 'a', 'a' * 20)", STRING),
    ("replace('a' * 500000, '', 'bb')", STRING),
    ("upper('ß' * 600000)", STRING),
    ('shell_quote("\'" * 300000)', STRING),
    ("url_encode('\U0001f600' * 100000)", STRING),
    ("split('a ' * 500000)", COLLECTION),
    ("split(params.big_text, '')", Fails(SelEvalError, "sep must not be empty")),
    ("lines('\\n' * 999999)", COLLECTION),
    ("params.big + params.big", COLLECTION),
    ("params.big_text + '!'", STRING),
    ("params.big_text * 2", STRING),
    ("str(params.big)", BUDGET),
    ("json(params.big)", BUDGET),
    ("format('{:>999}' * 2000, *params.big)", Fails(SelSyntaxError, "unpacking")),
    ("format('{:999}{:999}', 1, 2) * 1000", STRING),
    ("format('{:1000000}', 1)", Fails(SelEvalError, "invalid format spec")),
    ("format_date(today(), '%1000000Y')", Fails(SelEvalError, "unsupported directive")),
    ("format_date(today(), '%Y' * 100000)", Fails(SelEvalError, "longer than 200")),
    ("merge(params, {'x': [0] * 10**6})", COLLECTION),
    ("dict([[str(i), i] for i in range(200000)])", BUDGET),
    ("{x for x in range(10**6)}", BUDGET),
    ("{str(x): x for x in range(10**6)}", BUDGET),
    # -- huge integers and int <-> text --------------------------------------------------------
    ("10**10**10", INT_BITS),
    ("2**4096", INT_BITS),
    ("pow(10, 10**10)", INT_BITS),
    ("(2**4000) * (2**4000)", INT_BITS),
    ("1 << 10**9", INT_BITS),
    ("(2**4095) + (2**4095)", INT_BITS),
    ("sum([2**4095] * 4)", INT_BITS),
    ("int('9' * 1300)", INT_BITS),
    ("int('9' * 100000)", INT_BITS),
    ("str(10**4000)", INT_BITS),
    ("9" * 5000, SYNTAX),  # Python refuses int literals over 4300 digits
    ("1" + "0" * 1300, Fails(SelSyntaxError, "integer literal exceeds")),
    ("parse_json('9' * 5000)", Fails(SelEvalError, "invalid JSON")),
    ("parse_json('[' + '9' * 1300 + ']')", INT_BITS),
    ("float(10**400)", Fails(SelEvalError, "too large")),
    ("2.0 ** 10000", Fails(SelEvalError, "out of range")),
    ("days(10**20)", Fails(SelEvalError, "out of range")),
    ("round(5, -10**18)", Fails(SelEvalError, "ndigits")),
    # -- deep nesting: syntax and data ---------------------------------------------------------
    ("(" * 500 + "1" + ")" * 500, SYNTAX),
    ("-" * 5000 + "1", SYNTAX),
    ("not " * 3000 + "true", NESTED),
    ("[" * 150 + "]" * 150, SYNTAX),
    ("params" + ".x" * 4000, NESTED),
    ("+".join(["1"] * 5000), NESTED),
    ("1 if true else " * 1000 + "1", NESTED),
    ("len(" * 100 + "'x'" + ")" * 100, NESTED),
    ("[" * 70 + "1" + "]" * 70, NESTED),
    ("'" + "x" * 30000 + "'", Fails(SelSyntaxError, "exceeds the limit of 20000")),
    ("[" + "0," * 15000 + "]", Fails(SelSyntaxError, "exceeds the limit of 20000")),
    ("parse_json('[' * 100000 + ']' * 100000)", DEPTH),
    ("json(params.deep)", DEPTH),
    ("str(params.deep)", DEPTH),
    ("params.deep == params.deep2", DEPTH),
    ("params.deep < params.deep2", DEPTH),
    ("params.deep in [params.deep2]", DEPTH),
    ("len(flatten(params.deep))", Value(1)),
    # -- recursion and aliasing through data ---------------------------------------------------
    ("json(params.loop)", DEPTH),
    ("str(params.map_loop)", DEPTH),
    ("params.loop == params.loop2", DEPTH),
    ("params.loop == params.loop", Value(True)),
    ("params.loop[1][1][1][0]", Value(1)),
    ("params.map_loop.self.self.self.name", Value("loop")),
    ("str(params.aliased)", BUDGET),
    ("json([params.aliased] * 1000)", BUDGET),
    ("params.aliased == params.aliased2", BUDGET),
    ("[[[0] * 1000] * 1000] * 1000 == [[[0] * 1000] * 1000] * 1000", BUDGET),
    ("str([[[]] * 1000] * 1000)", BUDGET),
    ("len(flatten(flatten([[[0] * 1000] * 1000] * 1000)))", BUDGET),
    ("params.aliased in [params.aliased2]", BUDGET),
    ("count([params.aliased] * 100, params.aliased2)", BUDGET),
    ("sorted(params.aliased)", Fails(SelEvalError, "cannot sort")),
    # -- nested comprehensions and loops -------------------------------------------------------
    ("[[x for x in range(1000)] for y in range(1000)]", BUDGET),
    ("[x for x in range(1000) for y in range(1000) for z in range(1000)]", BUDGET),
    ("sum([1 for a in range(100) for b in range(100) for c in range(100)])", BUDGET),
    ("len([0 for x in range(10**5)])", BUDGET),
    ("{str(x): [y for y in range(10**6)] for x in range(10)}", BUDGET),
    ("[x for x in params.big]", BUDGET),
    ("[c for c in params.big_text]", BUDGET),
    ("[x for x in range(10) if [y for y in range(10**6)]]", BUDGET),
    ("any(x > 10**6 for x in range(10**9))", BUDGET),
    ("[[s * 1000 for s in ['x'] * 1000] for _ in range(1000)]", BUDGET),
    ("[format('{}', x) for x in range(10**6)]", BUDGET),
    # -- sorting and scanning large data -------------------------------------------------------
    ("sorted(params.big)", BUDGET),
    ("sorted(list(range(10**5)))", BUDGET),
    ("sorted([str(x) for x in range(50000)])", BUDGET),
    ("unique(params.big)", BUDGET),
    ("sum(params.big)", BUDGET),
    ("max(params.big)", BUDGET),
    ("params.big == params.big[:]", COLLECTION),
    ("count(params.big, -1)", BUDGET),
    ("index(params.big, -1)", BUDGET),
    ("-1 in params.big", BUDGET),
    ("str(params.big_text) == str(params.big_text)", Value(True)),
    # -- unicode tricks ------------------------------------------------------------------------
    (
        "\uff50\uff41\uff52\uff41\uff4d\uff53.n",
        Value(10),
    ),  # fullwidth "params": the same identifier after NFKC
    ("params.n\u200b", SYNTAX),  # zero-width space is not part of an identifier
    ('"\ud800"', Fails(SelSyntaxError, "invalid characters")),
    ("1\x00", SYNTAX),
    ("'\u202e' + 'txt.exe'", Value("\u202etxt.exe")),
    ("len('\U0001f600' * 10**7)", STRING),
    ("'\\N{LATIN SMALL LETTER A}' * 10**7", STRING),
    # -- plain runtime errors, reported not raised raw -----------------------------------------
    ("1 / 0", Fails(SelEvalError, "division by zero")),
    ("0 ** -1", Fails(SelEvalError, "zero cannot be raised")),
    ("(-8) ** 0.5", Fails(SelEvalError, "no real value")),
    ("params.missing.deeper", Fails(SelEvalError, "key 'missing' not found")),
    ("steps.a.outputs.nope", Fails(SelEvalError, "key 'nope' not found")),
    ("date('2026-02-30')", EVAL),
    ("date('9999-12-31') + days(1)", Fails(SelEvalError, "out of range")),
    ("json(float('nan'))", Fails(SelEvalError, "nan")),
    ("parse_date('x' * 10**5, '%Y')", Fails(SelEvalError, "longer than 200")),
    ("datetime('x' * 10**5)", Fails(SelEvalError, "too long")),
    ("int('x' * 10**5)", INT_BITS),
    ("signals.anything", Fails(SelEvalError, "not available here")),
]
