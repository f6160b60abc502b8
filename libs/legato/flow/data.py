"""Plain definition data from builder values: durations, values, names; YAML text; the builders' repr."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any, ClassVar

import yaml

from legato.core.durations import format_duration, parse_duration
from legato.core.errors import DefinitionError, DefinitionIssue

Duration = float | int | str | timedelta
"""Seconds, a duration text (``"90s"``, ``"1h30m"``) or a :class:`datetime.timedelta`."""


def duration_data(value: Any) -> Any:
    """A duration as definition data: a timedelta becomes seconds, anything else is left to the reader."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def duration_text(seconds: float) -> Any:
    """Canonical form of a normalised duration: ``"1h30m"`` when that reads back exactly, else seconds."""
    text = format_duration(seconds)
    try:
        if parse_duration(text, "") == seconds:
            return text
    except DefinitionError:
        pass
    return seconds


def value_data(value: Any) -> Any:
    """A param-like value as data: builder objects (``Expr``) become their data, containers recursively."""
    if dataclasses.is_dataclass(value) and hasattr(value, "to_data"):
        return value.to_data()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Mapping):
        return {k: value_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [value_data(v) for v in value]
    return value


def name_list(value: str | Iterable[str] | None) -> list[str] | None:
    """A list of names: one name alone is a list of one; None stays None (not given)."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    return list(value)


def put(out: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key`` unless ``value`` is None (not given: the reader's default applies)."""
    if value is not None:
        out[key] = value


def data_of(item: Any) -> Any:
    """A builder object's data; plain data (a dict or a name) is passed as is for the reader to judge."""
    to_data = getattr(item, "to_data", None)
    return to_data() if callable(to_data) else item


def datetime_text(value: datetime) -> str:
    """A normalised (UTC) datetime as ISO text with its offset."""
    return value.astimezone(UTC).isoformat()


def function_ref(function: str | Callable[..., Any]) -> str:
    """``module:function`` of a python step: given as text, or taken from an importable function."""
    if isinstance(function, str):
        return function
    module, name = getattr(function, "__module__", None), getattr(function, "__qualname__", None)
    if not module or not name or "<" in name or "." in name:
        raise TypeError(
            f"a python step's function must be 'module:function' or a module-level function, got {function!r}"
        )
    return f"{module}:{name}"


class Compact:
    """Prints as the call that builds it, options left at their default not shown (``eval`` gives it back)."""

    repr_positional: ClassVar[tuple[str, ...]] = ()
    """Fields shown as positional arguments, in this order."""
    repr_varargs: ClassVar[str | None] = None
    """A tuple field shown as ``*args``."""
    repr_kwargs: ClassVar[str | None] = None
    """A mapping field shown as ``**kwargs``."""

    def __repr__(self) -> str:
        head: list[str] = []
        tail: list[str] = []
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if field.name in self.repr_positional:
                continue
            if field.name == self.repr_varargs:
                head.extend(repr(item) for item in value)
            elif field.name == self.repr_kwargs:
                tail.extend(f"{k}={v!r}" for k, v in value.items())
            elif not _is_default(field, value):
                tail.append(f"{field.name}={value!r}")
        first = [repr(getattr(self, name)) for name in self.repr_positional]
        return f"{type(self).__name__}({', '.join(first + head + tail)})"


def _is_default(field: dataclasses.Field[Any], value: Any) -> bool:
    if field.default is not dataclasses.MISSING:
        return bool(value == field.default)
    if field.default_factory is not dataclasses.MISSING:
        return bool(value == field.default_factory())
    return False


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]  # libyaml when built in
    """Block-style YAML, keys in the order given, long text unwrapped."""


def _text_presenter(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value and value == value.strip("\n") + "\n" else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text_presenter)


def _plain(value: Any, path: str, issues: list[DefinitionIssue]) -> Any:
    """``value`` with tuples as lists; a value YAML cannot hold is an issue at its path."""
    if value is None or isinstance(value, (bool, int, float, str, date)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{path}[{i}]", issues) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {k: _plain(v, f"{path}.{k}" if path else str(k), issues) for k, v in value.items()}
    issues.append(DefinitionIssue(path, f"must be a JSON value, got a {type(value).__name__}"))
    return None


def dump_yaml(data: Any) -> str:
    """Definition data as YAML text that :func:`legato.core.parse_definition` reads back to the same data.

    Raises :class:`DefinitionError` naming the path of a value YAML cannot hold (a set, an object).
    """
    issues: list[DefinitionIssue] = []
    plain = _plain(data, "", issues)
    if issues:
        raise DefinitionError(issues)
    # YAML reads U+0085, U+2028 and U+2029 as line breaks even inside quotes: escape all non-ASCII then.
    raw_unicode = not any(ch in _LINE_BREAKS for ch in _strings(plain))
    return yaml.dump(plain, Dumper=_Dumper, sort_keys=False, allow_unicode=raw_unicode, width=1_000_000)


_LINE_BREAKS = frozenset("\x85\u2028\u2029")


def _strings(value: Any) -> Iterator[str]:
    """Every character of every text (keys included) in plain data."""
    if isinstance(value, str):
        yield from value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
