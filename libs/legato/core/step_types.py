"""Step types added by plugins, discovered through the entry-point group ``legato.step_types``.

A plugin is an installed package whose ``pyproject.toml`` declares, for example::

    [project.entry-points."legato.step_types"]
    greet = "legato_greet:step_type"

where ``step_type`` is a :class:`StepType`: the type's name (the entry point's name too), its config
schema (a msgspec Struct whose fields are the step's own fields in a definition, beside ``id``,
``depends_on`` and the other common ones), its runner, and whether the runner may be cancelled.

The trigger checks a plugin step's fields against the schema when a definition is pushed (the same
``steps[0].field: ...`` errors as built-in types); the scheduler evaluates ``${...}`` templates in
them; the executor decodes them into the Struct again and calls the runner. A plugin must therefore be
installed where the trigger and the executors run.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

import msgspec

from legato.core.errors import DefinitionIssue
from legato.core.model import STEP_TYPES

ENTRY_POINT_GROUP = "legato.step_types"

C = TypeVar("C", bound=msgspec.Struct)


class PluginStepFailed(Exception):
    """A plugin runner's failure it can name: the attempt fails with this message (and these outputs)."""

    def __init__(self, error: str, *, outputs: Mapping[str, Any] | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.outputs = dict(outputs or {})


@dataclass(frozen=True)
class StepCall(Generic[C]):
    """One attempt of a plugin step, as its runner sees it: the decoded config and the step's params."""

    config: C
    params: dict[str, Any]
    workflow_id: str
    instance_id: str
    step_id: str
    attempt: int
    attempt_id: str


@dataclass(frozen=True)
class StepType(Generic[C]):
    """What a plugin declares: a name, a config schema, a runner returning outputs, cancellability.

    ``cancellable=False``: on a timeout, a cancel or a shutdown the executor lets the running call
    finish (its result is then discarded) instead of cancelling it at its next ``await``.
    """

    name: str
    config: type[C]
    run: Callable[[StepCall[C]], Awaitable[Mapping[str, Any]]]
    cancellable: bool = True
    description: str = ""


@dataclass(frozen=True)
class InstalledStepTypes:
    """The plugins found in this environment, and those that failed to load (name -> why)."""

    types: dict[str, StepType[Any]] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)

    def names(self) -> list[str]:
        """Every step type a definition may use here: the built-in ones, then the plugins'."""
        return [*STEP_TYPES, *sorted(self.types)]

    def unknown_type(self, kind: object) -> str:
        """The message for a step type that is neither built in nor installed."""
        known = ", ".join(self.names())
        if isinstance(kind, str) and kind in self.broken:
            return f"plugin step type {kind!r} is installed but cannot be loaded: {self.broken[kind]}"
        hint = difflib.get_close_matches(kind, self.names(), n=1) if isinstance(kind, str) else []
        text = repr(kind)
        shown = text if len(text) <= 60 else text[:57] + "..."
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        return f"must be one of the installed step types: {known}; got {shown}{did_you_mean}"


def load_step_types(group: str = ENTRY_POINT_GROUP) -> InstalledStepTypes:
    """Load every entry point of ``group``; one that fails or is malformed is reported, not fatal."""
    found = InstalledStepTypes()
    for ep in entry_points(group=group):
        try:
            obj = ep.load()
        except Exception as exc:  # a plugin's import error must not stop the service
            found.broken[ep.name] = f"{type(exc).__name__}: {exc}"
            continue
        problem = check_step_type(ep.name, obj)
        if problem is not None:
            found.broken[ep.name] = problem
        else:
            found.types[ep.name] = obj
    return found


def check_step_type(name: str, obj: object) -> str | None:
    """Why ``obj`` (the entry point ``name``) is not a usable step type, or None."""
    if not isinstance(obj, StepType):
        return f"the entry point must name a legato.core.step_types.StepType, got {type(obj).__name__}"
    if obj.name != name:
        return f"the entry point is named {name!r} but its StepType is named {obj.name!r}"
    if name in STEP_TYPES or name == "plugin":
        return f"{name!r} is a built-in step type"
    if not (isinstance(obj.config, type) and issubclass(obj.config, msgspec.Struct)):
        return "StepType.config must be a msgspec.Struct class"
    if not callable(obj.run):
        return "StepType.run must be an async function"
    return None


@functools.cache
def installed_step_types() -> InstalledStepTypes:
    """The plugins of this process's environment, loaded once."""
    return load_step_types()


def config_fields(step_type: StepType[Any]) -> tuple[list[str], list[str]]:
    """The names a definition uses for the config's fields, and those that are required."""
    fields = msgspec.structs.fields(step_type.config)
    return [f.encode_name for f in fields], [f.encode_name for f in fields if f.required]


def check_config(step_type: StepType[Any], config: Mapping[str, Any], path: str) -> list[DefinitionIssue]:
    """Issues of a plugin step's config against its schema, named by path (``steps[0].size: ...``)."""
    try:
        msgspec.convert(dict(config), step_type.config)
    except msgspec.ValidationError as exc:
        return [DefinitionIssue(*explain(exc, path))]
    return []


def explain(exc: msgspec.ValidationError, root: str) -> tuple[str, str]:
    """msgspec's "Expected `int`, got `str` - at `$.size`" as (``root.size``, "expected int, got str")."""
    text = str(exc)
    rule, sep, where = text.partition(" - at `$")
    path = root + where.rstrip("`") if sep else root
    rule = rule.replace("`", "")
    if rule.startswith("Object missing required field "):
        return f"{path}.{rule.rsplit(' ', 1)[-1]}", "required"
    return path, rule[:1].lower() + rule[1:]
