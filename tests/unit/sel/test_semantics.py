"""SEL semantics: what each construct evaluates to, and how failures are reported."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from legato.sel import (
    DateRange,
    Limits,
    SelError,
    SelEvalError,
    SelLimitError,
    SelSyntaxError,
    compile_expression,
    compile_template,
)

ENV: dict[str, Any] = {
    "params": {
        "n": 21,
        "ds": "2026-11-01",
        "xs": [3, 1, 2],
        "m": {"a": 1, "b": {"c": "deep"}, "dash-key": 5},
        "name": "legato",
        "flag": True,
        "none": None,
        "d": date(2026, 11, 1),
    },
    "steps": {"extract": {"outputs": {"rows": 42}, "status": "succeeded"}},
}


def ev(source: str, env: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    return compile_expression(source).evaluate(ENV if env is None else env, **kwargs)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("7 // 2", 3),
        ("-7 // 2", -4),
        ("7 % 3", 1),
        ("7 / 2", 3.5),
        ("2 ** 10", 1024),
        ("2 ** -1", 0.5),
        ("1.5 + 1", 2.5),
        ("-params.n", -21),
        ("+params.n", 21),
        ("~5", -6),
        ("6 & 3", 2),
        ("6 | 3", 7),
        ("6 ^ 3", 5),
        ("1 << 4", 16),
        ("256 >> 4", 16),
        ("'ab' + 'cd'", "abcd"),
        ("'ab' * 3", "ababab"),
        ("3 * 'ab'", "ababab"),
        ("[1] + [2, 3]", [1, 2, 3]),
        ("[0] * 3", [0, 0, 0]),
        ("{1, 2} | {2, 3}", {1, 2, 3}),
        ("{1, 2} & {2, 3}", {2}),
        ("{1, 2} - {2}", {1}),
        ("{'a': 1} | {'b': 2}", {"a": 1, "b": 2}),
        ("true", True),
        ("null", None),
        ("None", None),
        ("False", False),
    ],
)
def test_arithmetic_and_literals(source: str, expected: Any) -> None:
    assert ev(source) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("1 < 2 < 3", True),
        ("1 < 3 < 2", False),
        ("params.n == 21", True),
        ("params.n != 21", False),
        ("1 == 1.0", True),
        ("'a' < 'b'", True),
        ("[1, 2] < [1, 3]", True),
        ("[1, 2] == [1, 2]", True),
        ("{'a': [1]} == {'a': [1]}", True),
        ("{'a': [1]} == {'a': [2]}", False),
        ("date('2026-01-01') < date('2026-01-02')", True),
        ("days(1) > hours(23)", True),
        ("'eg' in params.name", True),
        ("2 in params.xs", True),
        ("'a' in params.m", True),
        ("'z' not in params.m", True),
        ("5 in range(10)", True),
        ("1.5 in range(10**18)", False),
        ("date('2026-11-03') in date_range(date('2026-11-01'), date('2026-11-05'))", True),
        ("params.none is None", True),
        ("params.flag is not False", True),
        ("1 if params.flag else 2", 1),
        ("1 if params.none else 2", 2),
        ("params.none or 'fallback'", "fallback"),
        ("params.n and params.name", "legato"),
        ("not params.xs", False),
        ("not []", True),
    ],
)
def test_comparisons_and_logic(source: str, expected: Any) -> None:
    assert ev(source) == expected


def test_short_circuit_skips_the_failing_operand() -> None:
    assert ev("false and params.missing") is False
    assert ev("true or params.missing") is True
    assert ev("params.n if true else 1 / 0") == 21


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("params.m.a", 1),
        ("params.m.b.c", "deep"),
        ("params['m']['dash-key']", 5),
        ("params.xs[0]", 3),
        ("params.xs[-1]", 2),
        ("params.xs[1:]", [1, 2]),
        ("params.xs[::-1]", [2, 1, 3]),
        ("params.name[:3]", "leg"),
        ("range(10)[2:8:2]", range(2, 8, 2)),
        ("steps.extract.outputs.rows", 42),
        ("steps['extract'].status", "succeeded"),
    ],
)
def test_field_access_indexing_and_slicing(source: str, expected: Any) -> None:
    assert ev(source) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("[x * x for x in range(5)]", [0, 1, 4, 9, 16]),
        ("[x for x in range(10) if x % 3 == 0 if x > 0]", [3, 6, 9]),
        ("[(x, y) for x in range(2) for y in 'ab']", [[0, "a"], [0, "b"], [1, "a"], [1, "b"]]),
        ("{x % 3 for x in range(10)}", {0, 1, 2}),
        ("{k: v * 2 for k, v in items({'a': 1, 'b': 2})}", {"a": 2, "b": 4}),
        ("sum(x for x in range(5))", 10),
        ("[[y for y in range(x)] for x in range(3)]", [[], [0], [0, 1]]),
        ("[x for x in params.m]", ["a", "b", "dash-key"]),
        ("[x for x in {3, 1, 2}]", [1, 2, 3]),
    ],
)
def test_comprehensions(source: str, expected: Any) -> None:
    assert ev(source) == expected


def test_comprehension_variables_do_not_leak_and_can_shadow_functions() -> None:
    assert ev("[len for len in range(3)]") == [0, 1, 2]
    assert ev("[len(x) for x in ['a', 'bb']]") == [1, 2]
    with pytest.raises(SelSyntaxError, match="unknown name 'x'"):
        compile_expression("[x for x in range(3)] + [x]")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("params.name.upper()", "LEGATO"),
        ("'a,b'.split(',')", ["a", "b"]),
        ("', '.join(['x', 'y'])", "x, y"),
        ("params.m.get('zz', 0)", 0),
        ("params.m.keys()", ["a", "b", "dash-key"]),
        ("params.xs.count(1)", 1),
        ("'{} of {n}'.format(1, n=2)", "1 of 2"),
        ("days(2).total_seconds()", 172800.0),
    ],
)
def test_method_sugar_maps_to_library_functions(source: str, expected: Any) -> None:
    assert ev(source) == expected


def test_method_on_wrong_receiver_names_the_types_it_applies_to() -> None:
    with pytest.raises(SelEvalError, match=r"\.upper\(\) is not a method of list"):
        ev("params.xs.upper()")


def test_method_arguments_are_checked_for_the_actual_receiver() -> None:
    assert ev("params.xs.join()") == "312"  # list.join(sep="")
    with pytest.raises(SelEvalError, match=r"\.join\(\) on a string: missing the argument 'items'"):
        ev("params.name.join()")  # ", ".join(items) needs the items


def test_template_single_expression_keeps_its_type() -> None:
    assert compile_template("${params.d}").evaluate(ENV) == date(2026, 11, 1)
    assert compile_template("${params.xs}").evaluate(ENV) == [3, 1, 2]


def test_template_renders_parts_as_text() -> None:
    text = compile_template("n=${params.n} d=${params.d} f=${params.flag} z=${params.none} l=${params.xs}")
    assert text.evaluate(ENV) == "n=21 d=2026-11-01 f=true z=null l=[3,1,2]"


def test_template_escape_and_braces_inside_expressions() -> None:
    assert compile_template("$${not} ${'}'} ${ {'a': 1}['a'] }").evaluate(ENV) == "${not} } 1"
    assert compile_template("cost: $5").evaluate(ENV) == "cost: $5"
    constant = compile_template("plain $${x}")
    assert constant.is_constant and constant.evaluate({}) == "plain ${x}"


def test_template_unclosed_is_a_syntax_error_with_position() -> None:
    with pytest.raises(SelSyntaxError, match=r"unclosed \$\{") as info:
        compile_template("a\nb ${params.x", path="steps[0].command")
    assert info.value.position == (2, 3)
    assert str(info.value).startswith("steps[0].command: ")


def test_template_references_union_of_parts() -> None:
    template = compile_template("${params.a} ${steps.x.outputs.y}")
    assert template.references == {("params", "a"), ("steps", "x", "outputs", "y")}


def test_references_record_static_paths_only() -> None:
    expression = compile_expression(
        "params.a + params['b'] + len(steps.s.outputs[params.k]) + [x for x in params.l][0]"
    )
    assert expression.references == {
        ("params", "a"),
        ("params", "b"),
        ("steps", "s", "outputs"),
        ("params", "k"),
        ("params", "l"),
    }


def test_constant_expressions_are_known_at_compile_time() -> None:
    assert compile_expression("days(1) + hours(2)").is_constant
    assert not compile_expression("now()").is_constant
    assert compile_expression("now()").uses_clock
    assert not compile_expression("params.x").is_constant


def test_fixed_clock_drives_now_and_today() -> None:
    clock = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)
    assert ev("now()", now=clock) == clock
    assert ev("today('Asia/Tokyo')", now=clock) == date(2026, 3, 29)
    assert ev("today('America/New_York')", now=clock) == date(2026, 3, 28)
    naive = datetime(2026, 3, 29, 0, 30)
    assert ev("now()", now=naive) == clock


# ---------------------------------------------------------------------------- errors


def error_of(source: str, env: dict[str, Any] | None = None, path: str = "steps[2].when") -> SelError:
    with pytest.raises(SelError) as info:
        compile_expression(source, path=path).evaluate(ENV if env is None else env)
    return info.value


def test_missing_key_names_the_key_and_the_path() -> None:
    err = error_of("params.m.zz")
    assert isinstance(err, SelEvalError)
    assert "key 'zz' not found in params.m" in err.reason
    assert "it has: a, b, dash-key" in err.reason
    assert str(err).startswith("steps[2].when: ")
    assert err.expression == "params.m.zz"
    assert err.position == (1, 1)


def test_field_access_on_a_non_map_is_an_error_not_an_attribute() -> None:
    err = error_of("params.name.upper")
    assert "only maps have fields" in err.reason
    err = error_of("params.xs.append")
    assert "only maps have fields" in err.reason


def test_positions_point_at_the_failing_node() -> None:
    err = error_of("1 + (params.n / 0)")
    assert err.reason == "division by zero"
    assert err.position == (1, 6)
    err = error_of("(1 +\n  len(5))", path="x")
    assert err.position == (2, 3)


def test_positions_count_characters_not_bytes() -> None:
    err = error_of("'ééé' + 1")
    assert err.position == (1, 1)
    err = error_of("['ééé', 1 / 0]")
    assert err.position == (1, 9)


def test_str_of_an_error_has_path_reason_position_and_source() -> None:
    err = error_of("[x for x in range(10**9)]")
    assert isinstance(err, SelLimitError)
    assert err.limit == "max_steps"
    assert str(err) == "steps[2].when: budget of 100000 steps exceeded at 1:1 in `[x for x in range(10**9)]`"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("", "empty expression"),
        ("1 +", "unexpected end of expression"),
        ("x", "unknown name 'x'"),
        ("parms.x", "did you mean 'params'"),
        ("lenn(1)", "unknown function 'lenn' (did you mean len()?)"),
        ("len(1, 2)", "len(): too many positional arguments"),
        ("len", "'len' is a function"),
        ("params.__class__", "dunder names are not allowed"),
        ("lambda: 1", "lambda is not supported"),
        ("(x := 1)", "assignment (:=) is not supported"),
        ("f'{1}'", "f-strings are not supported"),
        ("[*params.xs]", "unpacking with * is not supported"),
        ("{**params.m}", "unpacking with ** is not supported"),
        ("params.x is 1", "'is' only compares with None"),
        ("b'bytes'", "bytes literals are not supported"),
        ("1j", "complex literals are not supported"),
        ("params.x.nope()", "unknown method .nope()"),
        ("(lambda: 1)()", "lambda is not supported"),
        ("[x for x.y in params.xs]", "a comprehension variable must be a name"),
        ("[params for params in []]", "cannot be used as a comprehension variable"),
        ("1 @ 2", "the @ operator is not supported"),
    ],
)
def test_syntax_errors(source: str, message: str) -> None:
    with pytest.raises(SelSyntaxError) as info:
        compile_expression(source, path="p")
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("1 + 'a'", "unsupported operand types for +: int and string"),
        ("'a' < 1", "cannot compare string with int"),
        ("[1][5]", "index 5 out of range"),
        ("params.xs['a']", "cannot read 'a' from params.xs: it is a list"),
        ("params.xs[params.name]", "an index into a list must be an int"),
        ("len(5)", "len(): an int has no length"),
        ("{[1]: 2}", "map keys must be strings"),
        ("{[1]}", "a set item must be a scalar"),
        ("'%s' % 1", "'%' formatting is not supported on strings"),
        ("params.nope", "key 'nope' not found in params"),
        ("signals.x", "'signals' is not available here"),
        ("[a for a, b in [[1]]]", "cannot unpack a list into 2 names"),
        ("int('x')", "int(): invalid int 'x'"),
        ("date('2026-02-30')", "invalid ISO 8601 date"),
    ],
)
def test_evaluation_errors(source: str, message: str) -> None:
    err = error_of(source)
    assert isinstance(err, SelEvalError)
    assert message in err.reason
    assert not err.internal


def test_host_objects_are_opaque() -> None:
    class Host:
        secret = "s3cr3t"

        def __getitem__(self, key: str) -> str:
            return "leak"

    env = {"params": {"h": Host()}}
    for source in ("params.h.secret", "params.h['x']", "len(params.h)", "str(params.h)"):
        with pytest.raises(SelEvalError):
            compile_expression(source).evaluate(env)


def test_limits_are_configurable() -> None:
    small = Limits(max_steps=50)
    with pytest.raises(SelLimitError, match="budget of 50 steps"):
        compile_expression("[x for x in range(100)]").evaluate({}, small)
    assert compile_expression("[x for x in range(10)]").evaluate({}, small) == list(range(10))
    with pytest.raises(SelLimitError, match="collection of 11 items exceeds the limit of 10"):
        compile_expression("list(range(11))").evaluate({}, Limits(max_collection=10))
    with pytest.raises(ValueError):
        Limits(max_int_bits=8)


def test_date_range_is_lazy_and_inclusive() -> None:
    value = ev("date_range(date('2026-01-01'), date('2026-12-31'))")
    assert isinstance(value, DateRange)
    assert len(value) == 365
    assert value[0] == date(2026, 1, 1)
    assert value[-1] == date(2026, 12, 31)
    assert list(value[:2]) == [date(2026, 1, 1), date(2026, 1, 2)]
    weekly = ev("date_range(date('2026-01-01'), date('2026-01-31'), days(7))")
    assert [d.day for d in weekly] == [1, 8, 15, 22, 29]
    backwards = ev("date_range(date('2026-01-03'), date('2026-01-01'), days(-1))")
    assert [d.day for d in backwards] == [3, 2, 1]
    assert len(ev("date_range(date('2026-01-03'), date('2026-01-01'))")) == 0


def test_datetime_arithmetic_is_exact_and_calendar_functions_keep_wall_time() -> None:
    # Europe/Paris springs forward on 2026-03-29 at 02:00 -> 03:00
    start = "datetime('2026-03-28T12:00:00', 'Europe/Paris')"
    assert ev(f"{start} + days(1)") == datetime(2026, 3, 29, 11, 0, tzinfo=UTC)  # 24 real hours later
    assert ev(f"hour({start} + days(1))") == 13
    assert ev(f"hour(add_days({start}, 1))") == 12
    assert ev(f"add_days({start}, 1) - {start}") == timedelta(hours=23)


def test_durations() -> None:
    assert ev("duration('1h30m')") == timedelta(hours=1, minutes=30)
    assert ev("str(duration(5400))") == "1h30m"
    assert ev("hours(1) * 2 + minutes(30)") == timedelta(hours=2, minutes=30)
    assert ev("hours(3) / hours(1)") == 3.0
    assert ev("date('2026-11-02') - date('2026-11-01')") == timedelta(days=1)
