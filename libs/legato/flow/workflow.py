"""The ``Workflow`` builder: steps, triggers and params in; the validated definition and YAML out."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Self

import yaml

from legato.core.compiled import analyze_definition
from legato.core.errors import DefinitionError, DefinitionIssue
from legato.core.loader import load_document
from legato.core.model import CronTrigger, WorkflowDefinition
from legato.core.reader import read_definition
from legato.flow.data import (
    Compact,
    Duration,
    data_of,
    dump_yaml,
    duration_data,
    duration_text,
    name_list,
    put,
)
from legato.flow.options import Param, Strategy, strategy_from_model
from legato.flow.steps import StepBase, step_from_model
from legato.flow.triggers import Cron, Signals


@dataclasses.dataclass(kw_only=True, eq=True, repr=False)
class Workflow(Compact):
    """A workflow definition built in Python: ``Workflow("daily", run_strategy=Parallel(4)).step(Shell(...))``.

    :meth:`definition` validates it like a YAML file (``DefinitionError`` naming each path) and returns the
    same :class:`~legato.core.model.WorkflowDefinition`; :meth:`to_yaml` writes its canonical YAML.
    """

    repr_positional: ClassVar[tuple[str, ...]] = ("id",)
    id: str
    description: str | None = None
    owner: str | None = None
    tags: list[str] | None = None
    criticality: str | None = None
    run_strategy: Strategy | str | Mapping[str, Any] | None = None
    step_concurrency: int | None = None
    timeout: Duration | None = None
    params: dict[str, Any] | None = None
    triggers: list[Any] = dataclasses.field(default_factory=list)
    steps: list[Any] = dataclasses.field(default_factory=list)

    def __init__(
        self,
        id: str,
        *,
        description: str | None = None,
        owner: str | None = None,
        tags: list[str] | None = None,
        criticality: str | None = None,
        run_strategy: Strategy | str | Mapping[str, Any] | None = None,
        step_concurrency: int | None = None,
        timeout: Duration | None = None,
        params: Mapping[str, Any] | None = None,
        triggers: Iterable[Any] = (),
        steps: Iterable[Any] = (),
    ) -> None:
        self.id = id
        self.description = description
        self.owner = owner
        self.tags = tags
        self.criticality = criticality
        self.run_strategy = run_strategy
        self.step_concurrency = step_concurrency
        self.timeout = timeout
        self.params = None if params is None else dict(params)
        self.triggers = list(triggers)
        self.steps = []
        for item in steps:
            self.step(item)

    def step(self, *steps: Any) -> Self:
        """Append steps (in order); returns the workflow, so calls chain."""
        for item in steps:
            if not isinstance(item, StepBase):
                raise TypeError(
                    f"Workflow({self.id!r}).step(): expected a step (Shell, Python, Step, ...), got {type(item).__name__}"
                )
            self.steps.append(item)
        return self

    def trigger(self, *triggers: Cron | Signals) -> Self:
        """Append triggers (``Cron(...)``, ``Signals(...)``); returns the workflow."""
        for item in triggers:
            if not isinstance(item, (Cron, Signals)):
                raise TypeError(
                    f"Workflow({self.id!r}).trigger(): expected Cron(...) or Signals(...), got {type(item).__name__}"
                )
            self.triggers.append(item)
        return self

    def param(self, name: str, spec: Any) -> Self:
        """Declare a param (a :class:`Param`, or a literal default whose type is inferred); returns the workflow."""
        if self.params is None:
            self.params = {}
        self.params[name] = spec
        return self

    # ------------------------------------------------------------------ out

    def to_data(self) -> dict[str, Any]:
        """The plain data a YAML file of this workflow holds, as written (not validated)."""
        out: dict[str, Any] = {"id": self.id}
        put(out, "description", self.description)
        put(out, "owner", self.owner)
        put(out, "tags", name_list(self.tags))
        put(out, "criticality", self.criticality)
        put(out, "run_strategy", None if self.run_strategy is None else data_of(self.run_strategy))
        put(out, "step_concurrency", self.step_concurrency)
        put(out, "timeout", duration_data(self.timeout))
        if self.params is not None:
            out["params"] = {name: data_of(spec) for name, spec in self.params.items()}
        if self.triggers:
            out["triggers"] = [data_of(t) for t in self.triggers]
        out["steps"] = [data_of(s) for s in self.steps]
        return out

    def source_yaml(self) -> str:
        """YAML of :meth:`to_data` (not validated): what ``legato workflow push module:attr`` sends."""
        return dump_yaml(self.to_data())

    def definition(self) -> WorkflowDefinition:
        """The validated, normalised definition; raises :class:`DefinitionError` listing every issue by path."""
        try:
            raw = load_document(self.source_yaml(), source=f"Workflow({self.id!r})")
        except yaml.YAMLError as exc:  # pragma: no cover - our own dump always loads
            raise DefinitionError([DefinitionIssue("", str(exc))]) from None
        definition, issues = read_definition(raw)
        if definition is not None:
            issues.extend(analyze_definition(definition)[1])
        if issues or definition is None:
            raise DefinitionError(issues)
        return definition

    def to_yaml(self) -> str:
        """Canonical YAML of the validated definition (defaults left out, durations as ``1h30m``)."""
        return dump_yaml(Workflow.from_definition(self.definition()).to_data())

    # ------------------------------------------------------------------ in

    @classmethod
    def from_definition(cls, definition: WorkflowDefinition) -> Workflow:
        """Builder objects for a normalised definition: ``from_definition(d).definition() == d``."""
        return cls(
            definition.id,
            description=definition.description,
            owner=definition.owner,
            tags=list(definition.tags) or None,
            criticality=None if definition.criticality == "medium" else definition.criticality,
            run_strategy=strategy_from_model(definition.run_strategy),
            step_concurrency=definition.step_concurrency,
            timeout=None if definition.timeout is None else duration_text(definition.timeout),
            params={name: Param.from_model(spec) for name, spec in definition.params.items()} or None,
            triggers=[
                Cron.from_model(t) if isinstance(t, CronTrigger) else Signals.from_model(t)
                for t in definition.triggers
            ],
            steps=[step_from_model(s) for s in definition.steps],
        )

    @classmethod
    def from_yaml(cls, text: str | bytes, *, source: str = "<definition>") -> Workflow:
        """Builder objects for a YAML or JSON definition (validated: ``DefinitionError`` on problems)."""
        from legato.core.definitions import parse_definition

        return cls.from_definition(parse_definition(text, source=source))
