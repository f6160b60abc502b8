"""Rows looked up by a batch of keys, one index probe per key, whatever plan the plan cache holds.

``WHERE id = ANY($1)`` is planned once per connection and then reused as a generic plan (asyncpg
prepares every statement; Postgres switches to a generic plan after five executions). A service
prepares its statements when it starts, when the tables are empty or small, and for an array of unknown
length a sequential scan is then the cheaper generic plan: it stays cached while the table grows,
until an ANALYZE invalidates it. Measured at 330 starts/s after 3,000 runs, the scheduler's check of
which runs exist read 1,244 rows per run that way. A lateral subquery with ``LIMIT 1`` cannot be
flattened into a join, so each key is an index probe in every plan, generic or not
(``tests/integration/test_key_probes.py``), but for a table ANALYZE found with a few dozen rows,
which a sequential scan reads as cheaply (until autovacuum analyzes it again, 50 rows and 10 % later).

The same holds for keys that come as a JSON array (``json=True``), which a statement passes where an
``unnest`` of an array parameter would make Postgres plan it for every call. There the count of keys
is unknown to every plan (Postgres assumes 100): ``EXISTS`` over the elements became a hash join that
read all of ``workflow_instance`` for each batch that started runs, from the ANALYZE that found it
with a few thousand rows until the next one.
"""

from __future__ import annotations


def probe(table: str, key: str, keys: str, columns: str, *, json: bool = False) -> str:
    """A FROM item: the rows of ``table`` whose ``key`` is one of ``keys`` (an SQL array expression,
    usually a parameter; with ``json``, a text parameter holding a JSON array of strings), one index
    probe per element; ``columns`` is the select list of each row (column names of ``table``). A key
    repeated in ``keys`` gives its row again; a missing key, none."""
    source = f"jsonb_array_elements_text({keys}::text::jsonb)" if json else f"unnest({keys})"
    return (
        f"{source} AS probe_key(k) CROSS JOIN LATERAL "
        f"(SELECT {columns} FROM {table} WHERE {key} = probe_key.k LIMIT 1)"
    )
