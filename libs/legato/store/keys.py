"""Rows looked up by a batch of keys, one index probe per key, whatever plan the plan cache holds.

``WHERE id = ANY($1)`` is planned once per connection and then reused as a generic plan (asyncpg
prepares every statement; Postgres switches to a generic plan after five executions). A service
prepares its statements when it starts, when the tables are empty or small, and for an array of unknown
length a sequential scan is then the cheaper generic plan: it stays cached while the table grows,
until an ANALYZE invalidates it. Measured at 330 starts/s after 3,000 runs, the scheduler's check of
which runs exist read 1,244 rows per run that way. A lateral subquery with ``LIMIT 1`` cannot be
flattened into a join, so each key is an index probe in every plan, generic or not
(``tests/integration/test_key_probes.py``).
"""

from __future__ import annotations


def probe(table: str, key: str, keys: str, columns: str) -> str:
    """A FROM item: the rows of ``table`` whose ``key`` is one of ``keys`` (an SQL array expression,
    usually a parameter), one index probe per element; ``columns`` is the select list of each row
    (column names of ``table``). A key repeated in ``keys`` gives its row again; a missing key, none."""
    return (
        f"unnest({keys}) AS probe_key(k) CROSS JOIN LATERAL "
        f"(SELECT {columns} FROM {table} WHERE {key} = probe_key.k LIMIT 1)"
    )
