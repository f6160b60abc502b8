"""Builder values that are not steps or triggers: params, run strategies, retries, edges, signals,
expressions, and the reference to another workflow."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from legato.core.model import Backoff as BackoffModel
from legato.core.model import (
    ParamSpec,
    RetryPolicy,
    RunStrategy,
    SignalLeg,
    SignalPublish,
    SignalWait,
    SubworkflowRef,
    Transition,
)
from legato.flow.data import Compact, Duration, data_of, duration_data, duration_text, put, value_data

# ---------------------------------------------------------------------------------- small values


@dataclasses.dataclass(frozen=True, repr=False)
class Expr(Compact):
    """A value computed by a SEL expression: ``{expr: "..."}`` in YAML (keeps the value's type)."""

    expr: str

    def to_data(self) -> dict[str, Any]:
        """``{"expr": ...}``."""
        return {"expr": self.expr}


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class Param(Compact):
    """A typed workflow param (``type`` one of string int float bool date datetime duration list map secret).

    A bare literal in ``Workflow(params=...)`` is the shorthand: its type is inferred.
    """

    type: str | None = None
    default: Any = None
    expr: str | None = None
    required: bool | None = None
    description: str | None = None
    values: list[Any] | None = None
    mode: str | None = None

    def to_data(self) -> dict[str, Any]:
        """The param as definition data."""
        out: dict[str, Any] = {}
        put(out, "type", self.type)
        put(out, "default", value_data(self.default))
        put(out, "expr", self.expr)
        put(out, "required", self.required)
        put(out, "description", self.description)
        put(out, "values", value_data(self.values))
        put(out, "mode", self.mode)
        return out

    @classmethod
    def from_model(cls, spec: ParamSpec) -> Param:
        """The builder form of a normalised param."""
        return cls(
            type=spec.type,
            default=spec.default,
            expr=spec.expr,
            required=spec.required or None,
            description=spec.description,
            values=spec.values,
            mode=None if spec.mode == "overridable" else spec.mode,
        )


# ---------------------------------------------------------------------------------- run strategies


@dataclasses.dataclass(frozen=True, repr=False)
class Strategy(Compact):
    """A run strategy; its data is its name (``Parallel`` adds ``max_concurrency``)."""

    name: ClassVar[str]

    def to_data(self) -> Any:
        return self.name


@dataclasses.dataclass(frozen=True, repr=False)
class Sequential(Strategy):
    """Runs one at a time, in order (the default)."""

    name: ClassVar[str] = "sequential"


@dataclasses.dataclass(frozen=True, repr=False)
class StrictSequential(Strategy):
    """One at a time; a failed run blocks the ones after it until it is dealt with."""

    name: ClassVar[str] = "strict_sequential"


@dataclasses.dataclass(frozen=True, repr=False)
class FirstOnly(Strategy):
    """A run started while one is active is skipped."""

    name: ClassVar[str] = "first_only"


@dataclasses.dataclass(frozen=True, repr=False)
class LastOnly(Strategy):
    """A new run stops the active one."""

    name: ClassVar[str] = "last_only"


@dataclasses.dataclass(frozen=True, repr=False)
class SerialLatestOnly(Strategy):
    """One at a time; of the queued runs only the newest runs next."""

    name: ClassVar[str] = "serial_latest_only"


@dataclasses.dataclass(frozen=True, repr=False)
class Parallel(Strategy):
    """Up to ``max_concurrency`` runs at once (the reader's default is 20; 0 pauses the workflow)."""

    name: ClassVar[str] = "parallel"
    max_concurrency: int | None = None

    def to_data(self) -> Any:
        """``{type: parallel, max_concurrency: N}``."""
        out: dict[str, Any] = {"type": "parallel"}
        put(out, "max_concurrency", self.max_concurrency)
        return out


_STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (Sequential, StrictSequential, FirstOnly, LastOnly, SerialLatestOnly, Parallel)
}


def strategy_from_model(strategy: RunStrategy) -> Strategy | None:
    """The builder of a normalised run strategy (None for the default, sequential)."""
    if strategy == RunStrategy():
        return None
    if strategy.type == "parallel":
        return Parallel(strategy.max_concurrency)
    return _STRATEGIES[strategy.type]()


# ---------------------------------------------------------------------------------- retries, edges


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class Backoff(Compact):
    """Delay between attempts: ``exponential`` (``initial``, ``max``, ``multiplier``) or ``fixed`` (``initial``)."""

    type: str | None = None
    initial: Duration | None = None
    max: Duration | None = None
    multiplier: float | None = None

    def to_data(self) -> dict[str, Any]:
        """The backoff as definition data."""
        out: dict[str, Any] = {}
        put(out, "type", self.type)
        put(out, "initial", duration_data(self.initial))
        put(out, "max", duration_data(self.max))
        put(out, "multiplier", self.multiplier)
        return out

    @classmethod
    def from_model(cls, backoff: BackoffModel) -> Backoff | None:
        """The builder form of a normalised backoff (None when it is the default)."""
        if backoff == BackoffModel():
            return None
        if backoff.type == "fixed":
            return cls(type="fixed", initial=duration_text(backoff.initial))
        default = BackoffModel()
        return cls(
            initial=None if backoff.initial == default.initial else duration_text(backoff.initial),
            max=None if backoff.max == default.max else duration_text(backoff.max),
            multiplier=None if backoff.multiplier == default.multiplier else backoff.multiplier,
        )


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class Retry(Compact):
    """Retries per kind of failure: after the step failed (``error``), a platform failure, a timeout."""

    error: int | None = None
    platform: int | None = None
    timeout: int | None = None
    backoff: Backoff | Mapping[str, Any] | None = None

    def to_data(self) -> dict[str, Any]:
        """The retry policy as definition data."""
        out: dict[str, Any] = {}
        put(out, "error", self.error)
        put(out, "platform", self.platform)
        put(out, "timeout", self.timeout)
        put(out, "backoff", None if self.backoff is None else data_of(self.backoff))
        return out

    @classmethod
    def from_model(cls, retry: RetryPolicy) -> Retry | None:
        """The builder form of a normalised retry policy (None when it is the default)."""
        if retry == RetryPolicy():
            return None
        default = RetryPolicy()
        return cls(
            error=None if retry.error == default.error else retry.error,
            platform=None if retry.platform == default.platform else retry.platform,
            timeout=None if retry.timeout == default.timeout else retry.timeout,
            backoff=Backoff.from_model(retry.backoff),
        )


@dataclasses.dataclass(frozen=True, repr=False)
class Next(Compact):
    """An edge to ``step``, taken when ``when`` (SEL, evaluated after this step succeeded) holds."""

    step: str
    when: str | None = None

    def to_data(self) -> Any:
        """The step id alone, or ``{step, when}``."""
        return self.step if self.when is None else {"step": self.step, "when": self.when}

    @classmethod
    def from_model(cls, transition: Transition) -> Next | str:
        """A bare step id for an unconditional edge, else a ``Next``."""
        return transition.step if transition.when is None else cls(transition.step, transition.when)


def _match_data(match: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if match is None else {k: value_data(v) for k, v in match.items()}


def _match_from_model(match: Mapping[str, Any]) -> dict[str, Any] | None:
    if not match:
        return None
    return {field: p.value if p.op == "=" else {p.op: p.value} for field, p in match.items()}


@dataclasses.dataclass(frozen=True, repr=False)
class Signal(Compact):
    """A named signal with predicates on its fields (``{"rows": {">": 0}}``): a trigger leg or a step's wait.

    ``when`` (SEL over ``signal.<field>``) is for trigger legs only.
    """

    name: str
    match: Mapping[str, Any] | None = None
    when: str | None = None

    def to_data(self) -> dict[str, Any]:
        """The signal as definition data."""
        out: dict[str, Any] = {"name": self.name}
        put(out, "match", _match_data(self.match))
        put(out, "when", self.when)
        return out

    @classmethod
    def from_model(cls, leg: SignalLeg | SignalWait) -> Signal:
        """The builder form of a trigger leg or a signal wait."""
        return cls(leg.name, _match_from_model(leg.match), getattr(leg, "when", None))


@dataclasses.dataclass(frozen=True, repr=False)
class Publish(Compact):
    """A signal a step publishes when it succeeds, with fields computed from expressions or templates."""

    name: str
    params: Mapping[str, Any] | None = None

    def to_data(self) -> dict[str, Any]:
        """The published signal as definition data."""
        out: dict[str, Any] = {"name": self.name}
        put(out, "params", None if self.params is None else value_data(self.params))
        return out

    @classmethod
    def from_model(cls, publish: SignalPublish) -> Publish:
        """The builder form of a normalised publish."""
        return cls(publish.name, dict(publish.params) or None)


@dataclasses.dataclass(frozen=True, repr=False)
class WorkflowRef(Compact):
    """Which workflow a subworkflow step (or a foreach iteration) runs, at which version, with which params."""

    workflow: str
    version: int | str | None = None
    params: Mapping[str, Any] | None = None
    apply_run_strategy: bool | None = None

    def to_data(self) -> dict[str, Any]:
        """The reference as definition data."""
        out: dict[str, Any] = {"workflow": self.workflow}
        put(out, "version", self.version)
        put(out, "params", None if self.params is None else value_data(self.params))
        put(out, "apply_run_strategy", self.apply_run_strategy)
        return out

    @classmethod
    def from_model(cls, ref: SubworkflowRef) -> WorkflowRef:
        """The builder form of a normalised reference."""
        return cls(
            ref.workflow,
            None if ref.version == "active" else ref.version,
            dict(ref.params) or None,
            ref.apply_run_strategy or None,
        )


def ref_data(ref: WorkflowRef | str | Mapping[str, Any]) -> Any:
    """A subworkflow reference as data: a bare workflow id is ``{workflow: id}``."""
    return WorkflowRef(ref).to_data() if isinstance(ref, str) else data_of(ref)
