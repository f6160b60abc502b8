"""``profile.py --statements`` counts the SQL statements of a bench phase from the embedded Postgres's
log: these are lines that log writes (taken from a run), so a changed format cannot silently count
nothing."""

from __future__ import annotations

import pytest

from tests.support.bench import load_bench_module


def load():  # type: ignore[no-untyped-def]
    return load_bench_module("_statements.py")


LOG = """\
2026-12-05 03:11:06.885 UTC [] LOG:  database system is ready to accept connections
2026-12-05 03:11:06.960 UTC [legato-trigger] LOG:  duration: 0.100 ms  statement: BEGIN;
2026-12-05 03:11:06.961 UTC [[unknown]] LOG:  duration: 0.484 ms  statement: SELECT 'legato-bench-mark paced-start'
2026-12-05 03:11:06.962 UTC [legato-trigger] LOG:  duration: 0.272 ms  parse <unnamed>: SELECT 1
2026-12-05 03:11:06.963 UTC [legato-trigger] LOG:  duration: 0.043 ms  bind <unnamed>: SELECT 1
2026-12-05 03:11:06.963 UTC [legato-trigger] LOG:  duration: 0.250 ms  execute <unnamed>: SELECT 1
2026-12-05 03:11:06.964 UTC [legato-scheduler 28f4d71c70f] LOG:  duration: 1.250 ms  execute __asyncpg_stmt_2__: WITH w AS (
\t\tINSERT INTO timer
\t\tSELECT 1)  SELECT true
2026-12-05 03:11:06.965 UTC [legato-scheduler 9a0b1c2d3e4] LOG:  duration: 0.750 ms  execute __asyncpg_stmt_7__: WITH w AS ( INSERT INTO timer SELECT 1) SELECT true
2026-12-05 03:11:06.966 UTC [legato-trigger] LOG:  duration: 1.000 ms  statement: COMMIT;
2026-12-05 03:11:06.966 UTC [[unknown]] LOG:  duration: 0.038 ms  statement: SELECT 'legato-bench-mark paced-end'
2026-12-05 03:11:06.967 UTC [legato-trigger] LOG:  duration: 9.000 ms  statement: COMMIT;
"""


def test_the_statements_between_the_markers_are_counted_by_session_kind() -> None:
    st = load()
    tallies = st.statements_between(LOG.splitlines(), "paced-start", "paced-end")
    counted = {key: (t.count, round(t.ms, 3)) for key, t in tallies.items()}
    assert counted == {
        ("legato-trigger", "SELECT 1"): (1, 0.25),  # the execute, not the parse and bind
        # Two scheduler incarnations, one statement over several lines and on one: one entry.
        ("legato-scheduler", "WITH w AS ( INSERT INTO timer SELECT 1) SELECT true"): (2, 2.0),
        ("legato-trigger", "COMMIT;"): (1, 1.0),  # before the end marker only
    }


def test_a_marker_label_is_a_fixed_word_never_a_value_pasted_into_sql() -> None:
    st = load()
    assert st.mark_sql("saturated-start") == "SELECT 'legato-bench-mark saturated-start'"
    with pytest.raises(ValueError, match="marker label"):
        st.mark_sql("x'; DROP TABLE outbox; --")


def test_the_statement_log_settings_keep_bind_parameters_out_of_the_log() -> None:
    assert load().STATEMENT_LOG["log_parameter_max_length"] == "0"
