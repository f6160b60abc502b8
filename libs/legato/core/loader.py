"""Definition text to plain data: JSON (precise line/column errors) or YAML (safe, YAML 1.2 booleans).

YAML quirks closed here: a duplicate key is an error (YAML silently keeps the last one), and only
``true``/``false`` are booleans (YAML 1.1 reads ``no``, ``on``, ``off`` as booleans — a country
code ``NO`` must stay a string).
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from legato.core.errors import DefinitionError, DefinitionIssue

MAX_DEFINITION_BYTES = 4 * 1024 * 1024


class _Loader(yaml.CSafeLoader):
    """Safe YAML loader that records duplicate keys and reads only true/false as booleans."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[int, int, str]] = []


def _yaml12_booleans(cls: type[yaml.CSafeLoader]) -> None:
    bool_tag = "tag:yaml.org,2002:bool"
    cls.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != bool_tag]
        for first, resolvers in yaml.CSafeLoader.yaml_implicit_resolvers.items()
    }
    cls.add_implicit_resolver(bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in out
        except TypeError:  # an unhashable key (a list): the reader reports non-string keys
            key = repr(key)
            duplicate = key in out
        if duplicate:
            mark = key_node.start_mark
            loader.duplicates.append((mark.line + 1, mark.column + 1, str(key)))
        out[key] = loader.construct_object(value_node, deep=True)
    return out


_yaml12_booleans(_Loader)
_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateJsonKey(key)
        out[key] = value
    return out


class _DuplicateJsonKey(ValueError):
    pass


def load_document(data: str | bytes, source: str = "<definition>") -> Any:
    """The data in a YAML or JSON text; raises :class:`DefinitionError` with line and column on a syntax error."""
    if isinstance(data, bytes):
        if len(data) > MAX_DEFINITION_BYTES:
            raise DefinitionError(
                [DefinitionIssue(source, f"definition larger than {MAX_DEFINITION_BYTES} bytes")]
            )
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DefinitionError(
                [DefinitionIssue(source, f"not UTF-8 text: {exc.reason} at byte {exc.start}")]
            ) from None
    else:
        text = data
        if len(text) > MAX_DEFINITION_BYTES:
            raise DefinitionError(
                [DefinitionIssue(source, f"definition larger than {MAX_DEFINITION_BYTES} characters")]
            )
    if not text.strip():
        raise DefinitionError([DefinitionIssue(source, "empty definition")])
    if text.lstrip().startswith(("{", "[")):
        return _load_json(text, source)
    return _load_yaml(text, source)


def _load_json(text: str, source: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_json_pairs)
    except _DuplicateJsonKey as exc:
        raise DefinitionError(
            [DefinitionIssue(source, f"invalid JSON: duplicate key {exc.args[0]!r}")]
        ) from None
    except json.JSONDecodeError as exc:
        raise DefinitionError(
            [DefinitionIssue(source, f"line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}")]
        ) from None
    except RecursionError:
        raise DefinitionError([DefinitionIssue(source, "invalid JSON: nested too deeply")]) from None


def _load_yaml(text: str, source: str) -> Any:
    loader = _Loader(text)
    try:
        data = loader.get_single_data()  # a second document is a ComposerError
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = ", ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise DefinitionError([DefinitionIssue(source, f"{where}invalid YAML: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise DefinitionError([DefinitionIssue(source, f"invalid YAML: {exc}")]) from None
    except RecursionError:
        raise DefinitionError([DefinitionIssue(source, "invalid YAML: nested too deeply")]) from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise DefinitionError(
            [
                DefinitionIssue(source, f"line {line}, column {col}: duplicate key {key!r}")
                for line, col, key in loader.duplicates
            ]
        )
    return data
