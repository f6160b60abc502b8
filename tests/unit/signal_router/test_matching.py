"""The router's pure decisions: which trigger leg a signal feeds, under which tuple, with which params."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from legato.core import SignalTrigger, compile_workflow, parse_definition
from legato.core.signals import schema_error, schema_problem
from legato.signal_router.matching import (
    RegisteredTrigger,
    Signal,
    TriggerTable,
    containment_filter,
    fire_params,
    missing_legs,
    route,
    tuple_of,
    wait_matches,
)

NOW = datetime(2026, 3, 1, tzinfo=UTC)

DEFINITION = """
id: wf
params:
  date: {type: date, required: true}
  region: {type: string}
  rows: {type: int}
triggers:
  - type: signal
    id: joined
    signals:
      - name: orders
        match: {status: done, rows: {">": 0}}
        when: "signal.rows < 1000"
      - name: payments
        match: {source: {in: [stripe, adyen]}}
    join: [date, region]
    params:
      date: "${signals.orders.date}"
      region: "${signals.payments.region}"
      rows: "${signals.orders.rows * 2}"
  - type: signal
    id: single
    signals:
      - name: orders
    params:
      date: "${signals.orders.date}"
steps:
  - id: s
    type: noop
"""


def registered(trigger_id: str, counts_from: datetime = NOW - timedelta(days=1)) -> RegisteredTrigger:
    compiled = compile_workflow(parse_definition(DEFINITION, source="wf.yaml"))
    trig = next(t for t in compiled.definition.triggers if t.id == trigger_id)
    assert isinstance(trig, SignalTrigger)
    return RegisteredTrigger("wf", 1, trig, compiled, counts_from)


def sig(name: str, sid: str, at: datetime = NOW, **fields: object) -> Signal:
    return Signal(name, sid, fields, at)


ORDERS = {"date": "2026-03-01", "region": "eu", "status": "done", "rows": 10}


def test_a_signal_feeds_every_leg_it_matches_under_its_join_tuple() -> None:
    table = TriggerTable.build(1, [registered("joined"), registered("single")])
    members = route(sig("orders", "o1", **ORDERS), table)
    got = sorted((m.trigger.trigger_id, m.leg, m.tuple_key) for m in members)
    assert got == [("joined", "orders", '["2026-03-01","eu"]'), ("single", "orders", "id:orders/o1")]


@pytest.mark.parametrize(
    "fields",
    [
        {**ORDERS, "status": "late"},  # equality
        {**ORDERS, "rows": 0},  # comparison
        {**ORDERS, "rows": 5000},  # SEL `when`
        {**ORDERS, "rows": "10"},  # a string never compares with a number
        {k: v for k, v in ORDERS.items() if k != "region"},  # lacks a join key
    ],
)
def test_a_signal_that_fails_a_predicate_or_lacks_a_join_key_feeds_nothing(fields: dict[str, object]) -> None:
    table = TriggerTable.build(1, [registered("joined")])
    assert route(sig("orders", "o1", **fields), table) == []


def test_signals_published_before_the_trigger_counts_from_are_ignored() -> None:
    table = TriggerTable.build(1, [registered("single", counts_from=NOW)])
    assert route(sig("orders", "old", NOW - timedelta(seconds=1), **ORDERS), table) == []
    assert len(route(sig("orders", "new", NOW, **ORDERS), table)) == 1


def test_tuple_keys_are_stable_and_distinguish_values_and_types() -> None:
    t = registered("joined").trigger
    a = tuple_of(t, sig("orders", "1", date="d", region="eu"))
    b = tuple_of(t, sig("payments", "2", region="eu", date="d", extra=1))
    c = tuple_of(t, sig("orders", "3", date="d", region="EU"))
    d = tuple_of(t, sig("orders", "4", date=1, region="eu"))
    e = tuple_of(t, sig("orders", "5", date="1", region="eu"))
    assert a is not None and b is not None and c is not None and d is not None and e is not None
    assert a[0] == b[0] and a[1] == {"date": "d", "region": "eu"}
    assert len({a[0], c[0], d[0], e[0]}) == 4


def test_completion_and_params_come_from_every_leg() -> None:
    t = registered("joined")
    assert missing_legs(t, {"orders": {}}) == ["payments"]
    assert missing_legs(t, {"orders": {}, "payments": {}}) == []
    params = fire_params(t, {"orders": ORDERS, "payments": {"region": "us", "source": "stripe"}})
    assert params == {"date": "2026-03-01", "region": "us", "rows": 20}


def test_step_wait_matches_and_its_containment_filter() -> None:
    match = {
        "date": {"op": "=", "value": "2026-01-01"},
        "n": {"op": ">", "value": 3},
        "ok": {"op": "=", "value": True},
    }
    assert wait_matches(match, {"date": "2026-01-01", "n": 4, "ok": True})
    assert not wait_matches(match, {"date": "2026-01-01", "n": 3, "ok": True})
    assert not wait_matches(match, {"n": 4, "ok": True})
    # Only scalar equalities narrow the scan (booleans are left to the exact check).
    assert containment_filter(match) == {"date": "2026-01-01"}


def test_signal_schemas_name_the_field_and_the_rule() -> None:
    schema = {"required": ["date"], "fields": {"rows": "integer", "ok": "boolean", "ratio": "number"}}
    assert schema_problem(schema) is None
    assert schema_error(schema, {"date": "d", "rows": 3, "ok": False, "ratio": 1}) is None
    assert schema_error(schema, {"rows": 3}) == "date: required by the signal's schema"
    assert schema_error(schema, {"date": "d", "rows": True}) == "rows: must be integer, got bool True"
    assert schema_error(schema, {"date": "d", "ratio": "x"}) == "ratio: must be number, got str 'x'"
    assert schema_problem({"fields": {"a": "date"}}) == (
        "schema.fields.a: must be one of string, number, integer, boolean, object, array, got 'date'"
    )
    assert schema_problem({"require": []}) == "schema: unknown keys ['require'] (allowed: required, fields)"
