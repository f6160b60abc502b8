"""Reading definition text: JSON and YAML, syntax errors with line and column, YAML traps."""

from __future__ import annotations

import time

import pytest

from legato.core import DefinitionError, parse_definition
from legato.core.loader import MAX_DEFINITION_BYTES, load_document
from tests.unit.core.builders import issues


def error_lines(data: str | bytes, source: str = "wf.yaml") -> list[str]:
    with pytest.raises(DefinitionError) as info:
        parse_definition(data, source=source)
    return [str(i) for i in info.value.errors]


def test_json_syntax_errors_give_line_and_column() -> None:
    text = '{\n  "id": "wf",\n  "steps": [\n    {"id": "a" "type": "noop"}\n  ]\n}'
    assert error_lines(text, "wf.json") == [
        "wf.json: line 4, column 16: invalid JSON: Expecting ',' delimiter"
    ]


def test_yaml_syntax_errors_give_line_and_column() -> None:
    text = "id: wf\nsteps:\n  - id: a\n    type: noop\n   bad: [\n"
    [line] = error_lines(text)
    assert line.startswith("wf.yaml: line 5, column")
    assert "invalid YAML" in line


def test_duplicate_keys_are_errors_in_yaml_and_json() -> None:
    assert error_lines("id: wf\nid: other\nsteps: []\n") == ["wf.yaml: line 2, column 1: duplicate key 'id'"]
    assert error_lines('{"id": "wf", "id": "x", "steps": []}', "x.json") == [
        "x.json: invalid JSON: duplicate key 'id'"
    ]


def test_yaml_reads_only_true_and_false_as_booleans() -> None:
    data = load_document("a: no\nb: on\nc: true\nd: False\ne: NO\n")
    assert data == {"a": "no", "b": "on", "c": True, "d": False, "e": "NO"}


def test_yaml_dates_become_iso_text_in_values() -> None:
    text = "id: wf\nparams:\n  d: 2026-11-01\nsteps:\n  - {id: a, type: noop, params: {when: 2026-11-02}}\n"
    defn = parse_definition(text)
    assert defn.params["d"].type == "date"
    assert defn.params["d"].default == "2026-11-01"
    assert defn.steps[0].params == {"when": "2026-11-02"}


def test_one_document_only() -> None:
    assert error_lines("id: a\nsteps: []\n---\nid: b\n") == [
        "wf.yaml: line 3, column 1: invalid YAML: expected a single document in the stream, but found another document"
    ]


@pytest.mark.parametrize("text", ["", "   \n", "---\n"])
def test_empty_definitions(text: str) -> None:
    lines = error_lines(text)
    assert lines in (
        ["wf.yaml: empty definition"],
        [": a definition must be a map with id and steps, got null"],
    ) or lines == ["a definition must be a map with id and steps, got null"]


def test_bytes_must_be_utf8_and_a_bom_is_accepted() -> None:
    assert error_lines(b"id: \xff\n") == ["wf.yaml: not UTF-8 text: invalid start byte at byte 4"]
    assert parse_definition(b"\xef\xbb\xbfid: wf\nsteps: [{id: a, type: noop}]\n").id == "wf"


def test_oversized_definitions_are_refused() -> None:
    assert error_lines("#" * (MAX_DEFINITION_BYTES + 1)) == [
        f"wf.yaml: definition larger than {MAX_DEFINITION_BYTES} characters"
    ]


def test_yaml_alias_bombs_are_refused_quickly() -> None:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):
        prev = chr(ord("a") + i - 1)
        cur = chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [{', '.join(['*' + prev] * 10)}]")
    text = "\n".join(lines) + "\nid: wf\nsteps:\n  - {id: s, type: noop, params: {bomb: *i}}\n"
    started = time.perf_counter()
    found = issues(text)
    assert time.perf_counter() - started < 5.0  # 10**9 values if expanded; stops after a million
    assert found[-1] == "definition too large: more than 1000000 values (YAML aliases expand?)"


def test_yaml_anchors_for_reuse_still_work() -> None:
    text = """
id: wf
steps:
  - id: a
    type: noop
    retry: &standard {error: 2, backoff: {initial: 5s}}
  - id: b
    type: noop
    retry: *standard
"""
    defn = parse_definition(text)
    assert defn.steps[0].retry == defn.steps[1].retry
    assert defn.steps[1].retry.error == 2


def test_non_string_keys_and_non_json_values_are_reported() -> None:
    found = issues("id: wf\nsteps:\n  - {id: a, type: noop, params: {x: !!binary aGk=}}\n1: x\n")
    assert "keys must be strings, got an int 1" in found
    assert "steps[0].params.x: must be a JSON value, got a bytes" in found
