"""Every hostile or runaway expression ends with the right outcome, fast and in bounded memory."""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

import pytest

from legato.sel import SelError, SelEvalError, SelLimitError, compile_expression
from tests.unit.sel.corpus import CORPUS, Fails, Value, hostile_env

WALL_LIMIT = 1.0  # seconds, per expression (typically milliseconds)
MEMORY_LIMIT = 64 * 1024 * 1024  # bytes of peak traced allocation per expression

ENV = hostile_env()


def test_the_corpus_is_large_enough() -> None:
    failing = [source for source, outcome in CORPUS if isinstance(outcome, Fails)]
    assert len(failing) >= 100
    assert len({source for source, _ in CORPUS}) == len(CORPUS), "duplicate entries"


def _run(source: str) -> Any:
    return compile_expression(source, path="corpus").evaluate(ENV)


def _outcome(source: str) -> tuple[Any, SelError | None]:
    try:
        return _run(source), None
    except SelError as exc:
        return None, exc


@pytest.mark.parametrize(("source", "outcome"), CORPUS, ids=[s[:50] for s, _ in CORPUS])
def test_hostile_expression(source: str, outcome: Fails | Value) -> None:
    started = time.perf_counter()
    result, error = _outcome(source)
    elapsed = time.perf_counter() - started  # timed without tracemalloc, which slows Python code several-fold
    tracemalloc.start()
    try:
        _outcome(source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < WALL_LIMIT, f"took {elapsed:.3f}s"
    assert peak < MEMORY_LIMIT, f"peak {peak / 1e6:.1f} MB"
    if isinstance(outcome, Value):
        assert error is None, f"unexpected {type(error).__name__}: {error}"
        assert result == outcome.value
        return
    assert error is not None, f"evaluated to {str(result)[:80]!r} instead of failing"
    assert isinstance(error, outcome.error), f"{type(error).__name__}: {error}"
    assert not (isinstance(error, SelEvalError) and error.internal), f"internal error: {error}"
    if isinstance(error, SelLimitError) and outcome.detail.startswith("max_"):
        assert error.limit == outcome.detail, str(error)
    else:
        assert outcome.detail in str(error), str(error)
    assert error.path == "corpus"
    assert error.expression == source


def test_budget_errors_say_which_limit_and_where() -> None:
    with pytest.raises(SelLimitError) as info:
        compile_expression("[x for x in range(10**12)]", path="steps[4].foreach.over").evaluate({})
    assert info.value.limit == "max_steps"
    assert str(info.value) == (
        "steps[4].foreach.over: budget of 100000 steps exceeded at 1:1 in `[x for x in range(10**12)]`"
    )
