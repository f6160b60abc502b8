"""Workflows as code: builder objects that describe exactly what a YAML definition describes.

Each builder object turns into the plain data a YAML file would hold (:meth:`to_data`), and the
workflow is validated by the same reader as YAML (:func:`legato.core.parse_definition`), so it
produces the same :class:`~legato.core.model.WorkflowDefinition` and the same path-named errors
(``steps[1].retry.error: must be >= 0, got -1``). :meth:`Workflow.from_definition` goes the other
way: a normalised definition back to builder objects, so YAML → code → YAML loses nothing.

An option left at ``None`` is not written, so the definition reader applies its default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any, ClassVar, Self

import yaml

from legato.core.compiled import analyze_definition
from legato.core.durations import format_duration, parse_duration
from legato.core.errors import DefinitionError, DefinitionIssue
from legato.core.loader import load_document
from legato.core.model import (
    Backoff as BackoffModel,
)
from legato.core.model import (
    CronTrigger,
    ForeachStep,
    HttpStep,
    LoopStep,
    NoopStep,
    NotebookStep,
    ParamSpec,
    PluginStep,
    PythonStep,
    RetryPolicy,
    RunStrategy,
    ShellStep,
    SignalLeg,
    SignalPublish,
    SignalTrigger,
    SignalWait,
    SleepStep,
    SqlStep,
    SubworkflowRef,
    SubworkflowStep,
    Transition,
    WorkflowDefinition,
)
from legato.core.model import (
    Step as StepModel,
)
from legato.core.reader import read_definition

__all__ = [
    "Backoff",
    "Cron",
    "Expr",
    "FirstOnly",
    "Foreach",
    "Http",
    "LastOnly",
    "Loop",
    "Next",
    "Noop",
    "Notebook",
    "Parallel",
    "Param",
    "Publish",
    "Python",
    "Retry",
    "Sequential",
    "SerialLatestOnly",
    "Shell",
    "Signal",
    "Signals",
    "Sleep",
    "Sql",
    "Statement",
    "Step",
    "StrictSequential",
    "Subworkflow",
    "Workflow",
    "WorkflowRef",
]

Duration = float | int | str | timedelta
"""Seconds, a duration text (``"90s"``, ``"1h30m"``) or a :class:`datetime.timedelta`."""


# ---------------------------------------------------------------------------------------- values


def _duration(value: Any) -> Any:
    """A duration as definition data: a timedelta becomes seconds, anything else is left to the reader."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def _duration_text(seconds: float) -> Any:
    """Canonical form of a normalised duration: ``"1h30m"`` when that reads back exactly, else seconds."""
    text = format_duration(seconds)
    try:
        if parse_duration(text, "") == seconds:
            return text
    except DefinitionError:
        pass
    return seconds


def _value(value: Any) -> Any:
    """A param-like value as data: builder objects (``Expr``) become their data, containers recursively."""
    if isinstance(value, Expr):
        return value.to_data()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Mapping):
        return {k: _value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_value(v) for v in value]
    return value


def _names(value: str | Iterable[str] | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    return list(value)


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key`` unless ``value`` is None (not given: the reader's default applies)."""
    if value is not None:
        out[key] = value


def _data_of(item: Any) -> Any:
    """A builder object's data; plain data (a dict or a name) is passed as is for the reader to judge."""
    to_data = getattr(item, "to_data", None)
    return to_data() if callable(to_data) else item


def _datetime_text(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _function_ref(function: str | Callable[..., Any]) -> str:
    """``module:function`` of a python step: given as text, or taken from an importable function."""
    if isinstance(function, str):
        return function
    module, name = getattr(function, "__module__", None), getattr(function, "__qualname__", None)
    if not module or not name or "<" in name or "." in name:
        raise TypeError(
            f"a python step's function must be 'module:function' or a module-level function, got {function!r}"
        )
    return f"{module}:{name}"


# ---------------------------------------------------------------------------------- small values


@dataclasses.dataclass(frozen=True)
class Expr:
    """A value computed by a SEL expression: ``{expr: "..."}`` in YAML (keeps the value's type)."""

    expr: str

    def to_data(self) -> dict[str, Any]:
        """``{"expr": ...}``."""
        return {"expr": self.expr}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Param:
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
        _put(out, "type", self.type)
        _put(out, "default", _value(self.default))
        _put(out, "expr", self.expr)
        _put(out, "required", self.required)
        _put(out, "description", self.description)
        _put(out, "values", _value(self.values))
        _put(out, "mode", self.mode)
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


@dataclasses.dataclass(frozen=True)
class _Strategy:
    name: ClassVar[str]

    def to_data(self) -> Any:
        return self.name


@dataclasses.dataclass(frozen=True)
class Sequential(_Strategy):
    """Runs one at a time, in order (the default)."""

    name: ClassVar[str] = "sequential"


@dataclasses.dataclass(frozen=True)
class StrictSequential(_Strategy):
    """One at a time; a failed run blocks the ones after it until it is dealt with."""

    name: ClassVar[str] = "strict_sequential"


@dataclasses.dataclass(frozen=True)
class FirstOnly(_Strategy):
    """A run started while one is active is skipped."""

    name: ClassVar[str] = "first_only"


@dataclasses.dataclass(frozen=True)
class LastOnly(_Strategy):
    """A new run stops the active one."""

    name: ClassVar[str] = "last_only"


@dataclasses.dataclass(frozen=True)
class SerialLatestOnly(_Strategy):
    """One at a time; of the queued runs only the newest runs next."""

    name: ClassVar[str] = "serial_latest_only"


@dataclasses.dataclass(frozen=True)
class Parallel(_Strategy):
    """Up to ``max_concurrency`` runs at once (the reader's default is 20; 0 pauses the workflow)."""

    name: ClassVar[str] = "parallel"
    max_concurrency: int | None = None

    def to_data(self) -> Any:
        """``{type: parallel, max_concurrency: N}``."""
        out: dict[str, Any] = {"type": "parallel"}
        _put(out, "max_concurrency", self.max_concurrency)
        return out


_STRATEGIES: dict[str, type[_Strategy]] = {
    cls.name: cls for cls in (Sequential, StrictSequential, FirstOnly, LastOnly, SerialLatestOnly, Parallel)
}


def _strategy_from_model(strategy: RunStrategy) -> _Strategy | None:
    if strategy == RunStrategy():
        return None
    if strategy.type == "parallel":
        return Parallel(strategy.max_concurrency)
    return _STRATEGIES[strategy.type]()


# ---------------------------------------------------------------------------------- retries, edges


@dataclasses.dataclass(frozen=True, kw_only=True)
class Backoff:
    """Delay between attempts: ``exponential`` (``initial``, ``max``, ``multiplier``) or ``fixed`` (``initial``)."""

    type: str | None = None
    initial: Duration | None = None
    max: Duration | None = None
    multiplier: float | None = None

    def to_data(self) -> dict[str, Any]:
        """The backoff as definition data."""
        out: dict[str, Any] = {}
        _put(out, "type", self.type)
        _put(out, "initial", _duration(self.initial))
        _put(out, "max", _duration(self.max))
        _put(out, "multiplier", self.multiplier)
        return out

    @classmethod
    def from_model(cls, backoff: BackoffModel) -> Backoff | None:
        """The builder form of a normalised backoff (None when it is the default)."""
        if backoff == BackoffModel():
            return None
        if backoff.type == "fixed":
            return cls(type="fixed", initial=_duration_text(backoff.initial))
        default = BackoffModel()
        return cls(
            initial=None if backoff.initial == default.initial else _duration_text(backoff.initial),
            max=None if backoff.max == default.max else _duration_text(backoff.max),
            multiplier=None if backoff.multiplier == default.multiplier else backoff.multiplier,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Retry:
    """Retries per kind of failure: after the step failed (``error``), a platform failure, a timeout."""

    error: int | None = None
    platform: int | None = None
    timeout: int | None = None
    backoff: Backoff | Mapping[str, Any] | None = None

    def to_data(self) -> dict[str, Any]:
        """The retry policy as definition data."""
        out: dict[str, Any] = {}
        _put(out, "error", self.error)
        _put(out, "platform", self.platform)
        _put(out, "timeout", self.timeout)
        _put(out, "backoff", None if self.backoff is None else _data_of(self.backoff))
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


@dataclasses.dataclass(frozen=True)
class Next:
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
    return None if match is None else {k: _value(v) for k, v in match.items()}


def _match_from_model(match: Mapping[str, Any]) -> dict[str, Any] | None:
    if not match:
        return None
    return {field: p.value if p.op == "=" else {p.op: p.value} for field, p in match.items()}


@dataclasses.dataclass(frozen=True)
class Signal:
    """A named signal with predicates on its fields (``{"rows": {">": 0}}``): a trigger leg or a step's wait.

    ``when`` (SEL over ``signal.<field>``) is for trigger legs only.
    """

    name: str
    match: Mapping[str, Any] | None = None
    when: str | None = None

    def to_data(self) -> dict[str, Any]:
        """The signal as definition data."""
        out: dict[str, Any] = {"name": self.name}
        _put(out, "match", _match_data(self.match))
        _put(out, "when", self.when)
        return out

    @classmethod
    def from_model(cls, leg: SignalLeg | SignalWait) -> Signal:
        """The builder form of a trigger leg or a signal wait."""
        return cls(leg.name, _match_from_model(leg.match), getattr(leg, "when", None))


@dataclasses.dataclass(frozen=True)
class Publish:
    """A signal a step publishes when it succeeds, with fields computed from expressions or templates."""

    name: str
    params: Mapping[str, Any] | None = None

    def to_data(self) -> dict[str, Any]:
        """The published signal as definition data."""
        out: dict[str, Any] = {"name": self.name}
        _put(out, "params", None if self.params is None else _value(self.params))
        return out

    @classmethod
    def from_model(cls, publish: SignalPublish) -> Publish:
        """The builder form of a normalised publish."""
        return cls(publish.name, dict(publish.params) or None)


# ---------------------------------------------------------------------------------- triggers


@dataclasses.dataclass(frozen=True, kw_only=True)
class Cron:
    """A cron trigger: a run at each fire time of a 5-field schedule in a time zone."""

    cron: str
    id: str | None = None
    timezone: str | None = None
    params: Mapping[str, Any] | None = None
    catch_up: str | None = None
    max_catch_up: int | None = None
    start: datetime | date | str | None = None
    end: datetime | date | str | None = None
    jitter: Duration | None = None

    def __init__(
        self,
        cron: str,
        *,
        id: str | None = None,
        timezone: str | None = None,
        params: Mapping[str, Any] | None = None,
        catch_up: str | None = None,
        max_catch_up: int | None = None,
        start: datetime | date | str | None = None,
        end: datetime | date | str | None = None,
        jitter: Duration | None = None,
    ) -> None:
        for name, value in locals().items():
            if name != "self":
                object.__setattr__(self, name, value)

    def to_data(self) -> dict[str, Any]:
        """The trigger as definition data."""
        out: dict[str, Any] = {"type": "cron"}
        _put(out, "id", self.id)
        out["cron"] = self.cron
        _put(out, "timezone", self.timezone)
        _put(out, "params", None if self.params is None else _value(self.params))
        _put(out, "catch_up", self.catch_up)
        _put(out, "max_catch_up", self.max_catch_up)
        _put(out, "start", self.start)
        _put(out, "end", self.end)
        _put(out, "jitter", _duration(self.jitter))
        return out

    @classmethod
    def from_model(cls, trigger: CronTrigger) -> Cron:
        """The builder form of a normalised cron trigger."""
        return cls(
            trigger.cron,
            id=trigger.id,
            timezone=None if trigger.timezone == "UTC" else trigger.timezone,
            params=dict(trigger.params) or None,
            catch_up=None if trigger.catch_up == "all" else trigger.catch_up,
            max_catch_up=None
            if trigger.max_catch_up == 100 or trigger.catch_up != "all"
            else trigger.max_catch_up,
            start=None if trigger.start is None else _datetime_text(trigger.start),
            end=None if trigger.end is None else _datetime_text(trigger.end),
            jitter=_duration_text(trigger.jitter) if trigger.jitter else None,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Signals:
    """A signal trigger: one run per completed tuple of matching signals, joined on the ``join`` keys."""

    signals: tuple[Signal | str, ...]
    id: str | None = None
    join: list[str] | str | None = None
    expiry: Duration | None = None
    since: datetime | str | None = None
    params: Mapping[str, Any] | None = None

    def __init__(
        self,
        *signals: Signal | str,
        id: str | None = None,
        join: list[str] | str | None = None,
        expiry: Duration | None = None,
        since: datetime | str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        object.__setattr__(self, "signals", tuple(signals))
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "join", join)
        object.__setattr__(self, "expiry", expiry)
        object.__setattr__(self, "since", since)
        object.__setattr__(self, "params", params)

    def to_data(self) -> dict[str, Any]:
        """The trigger as definition data."""
        out: dict[str, Any] = {"type": "signal"}
        _put(out, "id", self.id)
        out["signals"] = [Signal(s).to_data() if isinstance(s, str) else _data_of(s) for s in self.signals]
        _put(out, "join", _names(self.join))
        _put(out, "expiry", _duration(self.expiry))
        _put(out, "since", self.since)
        _put(out, "params", None if self.params is None else _value(self.params))
        return out

    @classmethod
    def from_model(cls, trigger: SignalTrigger) -> Signals:
        """The builder form of a normalised signal trigger."""
        legs = [
            leg.name if not leg.match and leg.when is None else Signal.from_model(leg)
            for leg in trigger.signals
        ]
        return cls(
            *legs,
            id=trigger.id,
            join=list(trigger.join) if trigger.join or len(trigger.signals) > 1 else None,
            expiry=None if trigger.expiry == 7 * 86400.0 else _duration_text(trigger.expiry),
            since=None if trigger.since is None else _datetime_text(trigger.since),
            params=dict(trigger.params) or None,
        )


# ---------------------------------------------------------------------------------- steps

_COMMON = (
    "description",
    "params",
    "depends_on",
    "next",
    "retry",
    "timeout",
    "on_failure",
    "queue",
    "concurrency_tags",
    "wait_for_signals",
    "publish_signals",
    "outputs",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _StepBase:
    """Options every step type takes (the names of the YAML fields; ``after`` is ``depends_on``)."""

    kind: ClassVar[str]
    id: str
    description: str | None = None
    params: Mapping[str, Any] | None = None
    depends_on: list[str] | str | None = None
    next: list[Next | str] | None = None
    retry: Retry | int | None = None
    timeout: Duration | None = None
    on_failure: str | None = None
    queue: str | None = None
    concurrency_tags: list[str] | None = None
    wait_for_signals: list[Signal | str] | None = None
    publish_signals: list[Publish | str] | None = None
    outputs: list[str] | None = None
    after: dataclasses.InitVar[list[str] | str | None] = None

    def __post_init__(self, after: list[str] | str | None) -> None:
        if after is not None:
            if self.depends_on is not None:
                raise TypeError(f"step {self.id!r}: give after or depends_on, not both (they are the same)")
            object.__setattr__(self, "depends_on", after)

    def _common_data(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "type": self.kind}
        _put(out, "description", self.description)
        _put(out, "params", None if self.params is None else _value(self.params))
        _put(out, "depends_on", _names(self.depends_on))
        if self.next is not None:
            out["next"] = [_data_of(n) for n in self.next]
        _put(out, "retry", None if self.retry is None else _data_of(self.retry))
        _put(out, "timeout", _duration(self.timeout))
        _put(out, "on_failure", self.on_failure)
        _put(out, "queue", self.queue)
        _put(out, "concurrency_tags", _names(self.concurrency_tags))
        if self.wait_for_signals is not None:
            out["wait_for_signals"] = [
                {"name": w} if isinstance(w, str) else _data_of(w) for w in self.wait_for_signals
            ]
        if self.publish_signals is not None:
            out["publish_signals"] = [
                {"name": p} if isinstance(p, str) else _data_of(p) for p in self.publish_signals
            ]
        _put(out, "outputs", _names(self.outputs))
        return out

    def to_data(self) -> dict[str, Any]:
        """The step as definition data."""
        return self._common_data()

    def _with(self, specific: dict[str, Any]) -> dict[str, Any]:
        """The common data with the type's own fields right after ``id`` and ``type`` (as people write YAML)."""
        common = self._common_data()
        return {"id": common.pop("id"), "type": common.pop("type"), **specific, **common}


def _common_from_model(step: StepModel) -> dict[str, Any]:
    return {
        "id": step.id,
        "description": step.description,
        "params": dict(step.params) or None,
        "depends_on": list(step.depends_on) or None,
        "next": [Next.from_model(t) for t in step.next] or None,
        "retry": Retry.from_model(step.retry),
        "timeout": None if step.timeout is None else _duration_text(step.timeout),
        "on_failure": None if step.on_failure == "fail" else step.on_failure,
        "queue": None if step.queue == "default" else step.queue,
        "concurrency_tags": list(step.concurrency_tags) or None,
        "wait_for_signals": [w.name if not w.match else Signal.from_model(w) for w in step.wait_for_signals]
        or None,
        "publish_signals": [p.name if not p.params else Publish.from_model(p) for p in step.publish_signals]
        or None,
        "outputs": list(step.outputs) or None,
    }


@dataclasses.dataclass(frozen=True, kw_only=True)
class Noop(_StepBase):
    """A step that does nothing: a join point or a placeholder."""

    kind: ClassVar[str] = "noop"

    def __init__(self, id: str, **options: Any) -> None:
        _init(self, id=id, **options)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sleep(_StepBase):
    """Waits for ``duration`` (a duration, or a ``${...}`` template giving one)."""

    kind: ClassVar[str] = "sleep"
    duration: Duration = 0

    def __init__(self, id: str, duration: Duration, **options: Any) -> None:
        _init(self, id=id, duration=duration, **options)

    def to_data(self) -> dict[str, Any]:
        """The step as definition data."""
        return self._with({"duration": _duration(self.duration)})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Shell(_StepBase):
    """Runs a shell ``command`` (a template; every ``${...}`` is quoted), with extra ``env`` and ``artifacts``."""

    kind: ClassVar[str] = "shell"
    command: str = ""
    env: Mapping[str, Any] | None = None
    artifacts: list[str] | None = None

    def __init__(self, id: str, command: str, **options: Any) -> None:
        _init(self, id=id, command=command, **options)

    def to_data(self) -> dict[str, Any]:
        """The step as definition data."""
        out: dict[str, Any] = {"command": self.command}
        _put(out, "env", None if self.env is None else _value(self.env))
        _put(out, "artifacts", _names(self.artifacts))
        return self._with(out)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Python(_StepBase):
    """Calls ``function`` (``"module:function"``, or a module-level function) with the step's params."""

    kind: ClassVar[str] = "python"
    function: str = ""

    def __init__(self, id: str, function: str | Callable[..., Any], **options: Any) -> None:
        _init(self, id=id, function=_function_ref(function), **options)

    def to_data(self) -> dict[str, Any]:
        """The step as definition data."""
        return self._with({"function": self.function})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Http(_StepBase):
    """Sends an HTTP request; success is a 2xx status unless ``success_status`` lists others."""

    kind: ClassVar[str] = "http"
    url: str = ""
    method: str | None = None
    headers: Mapping[str, Any] | None = None
    body: Any = None
    success_status: list[int] | int | None = None

    def __init__(self, id: str, url: str, **options: Any) -> None:
        _init(self, id=id, url=url, **options)

    def to_data(self) -> dict[str, Any]:
        """The step as definition data."""
        out: dict[str, Any] = {"url": self.url}
        _put(out, "method", self.method)
        _put(out, "headers", None if self.headers is None else _value(self.headers))
        _put(out, "body", _value(self.body))
        _put(out, "success_status", self.success_status)
        return self._with(out)


@dataclasses.dataclass(frozen=True)
class Statement:
    """One SQL statement and the values bound to its ``$1, $2, ...`` (templates allowed in ``args``)."""

    sql: str
    args: list[Any] | None = None

    def to_data(self) -> dict[str, Any]:
        """The statement as definition data."""
        out: dict[str, Any] = {"sql": self.sql}
        _put(out, "args", None if self.args is None else _value(self.args))
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sql(_StepBase):
    """Runs ``sql`` (with ``args``) or ``statements`` on a named ``connection``, in one transaction by default."""

    kind: ClassVar[str] = "sql"
    connection: str = ""
    sql: str | None = None
    args: list[Any] | None = None
    statements: list[Statement | str] | None = None
    transaction: bool | None = None
    result: str | None = None
    max_rows: int | None = None

    def __init__(self, id: str, connection: str, **options: Any) -> None:
        _init(self, id=id, connection=connection, **options)

    def to_data(self) -> dict[str, Any]:
        """The step as definition data."""
        out: dict[str, Any] = {"connection": self.connection}
        _put(out, "sql", self.sql)
        _put(out, "args", None if self.args is None else _value(self.args))
        if self.statements is not None:
            out["statements"] = [_data_of(s) for s in self.statements]
        _put(out, "transaction", self.transaction)
        _put(out, "result", self.result)
        _put(out, "max_rows", self.max_rows)
        return self._with(out)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Notebook(_StepBase):
    """Executes a Jupyter ``notebook`` (a path on the executor) with the step's params injected."""

    kind: ClassVar[str] = "notebook"
    notebook: str = ""
    kernel: str | None = None

    def __init__(self, id: str, notebook: str, **options: Any) -> None:
        _init(self, id=id, notebook=notebook, **options)

    def to_data(self) -> dict[str, Any]:
        """The step as definition data."""
        out: dict[str, Any] = {"notebook": self.notebook}
        _put(out, "kernel", self.kernel)
        return self._with(out)


@dataclasses.dataclass(frozen=True)
class WorkflowRef:
    """Which workflow a subworkflow step (or a foreach iteration) runs, at which version, with which params."""

    workflow: str
    version: int | str | None = None
    params: Mapping[str, Any] | None = None
    apply_run_strategy: bool | None = None

    def to_data(self) -> dict[str, Any]:
        """The reference as definition data."""
        out: dict[str, Any] = {"workflow": self.workflow}
        _put(out, "version", self.version)
        _put(out, "params", None if self.params is None else _value(self.params))
        _put(out, "apply_run_strategy", self.apply_run_strategy)
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


def _ref_data(ref: WorkflowRef | str | Mapping[str, Any]) -> Any:
    return WorkflowRef(ref).to_data() if isinstance(ref, str) else _data_of(ref)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Subworkflow(_StepBase):
    """Runs another workflow as a child run and waits for it (``workflow``: an id or a :class:`WorkflowRef`)."""

    kind: ClassVar[str] = "subworkflow"
    workflow: WorkflowRef | str = ""

    def __init__(self, id: str, workflow: WorkflowRef | str, **options: Any) -> None:
        _init(self, id=id, workflow=workflow, **options)

    def to_data(self) -> dict[str, Any]:
        """The step as definition data."""
        return self._with({"subworkflow": _ref_data(self.workflow)})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Foreach(_StepBase):
    """Fans out over ``over`` (an expression): a body of ``steps`` per item, or a ``subworkflow`` per item."""

    kind: ClassVar[str] = "foreach"
    over: str = ""
    as_: str | None = None
    concurrency: int | None = None
    iteration_on_failure: str | None = None
    """The foreach's own ``on_failure`` (what a failed iteration does to the others)."""
    steps: list[Any] | None = None
    subworkflow: WorkflowRef | str | None = None

    def __init__(self, id: str, over: str, **options: Any) -> None:
        _init(self, id=id, over=over, **options)

    def to_data(self) -> dict[str, Any]:
        """The step as definition data."""
        spec: dict[str, Any] = {"over": self.over}
        _put(spec, "as", self.as_)
        _put(spec, "concurrency", self.concurrency)
        _put(spec, "on_failure", self.iteration_on_failure)
        if self.steps is not None:
            spec["steps"] = [_data_of(s) for s in self.steps]
        if self.subworkflow is not None:
            spec["subworkflow"] = _ref_data(self.subworkflow)
        return self._with({"foreach": spec})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Loop(_StepBase):
    """Repeats ``steps`` while ``while_`` holds (checked before each iteration), at most ``max_iterations`` times."""

    kind: ClassVar[str] = "loop"
    while_: str = ""
    max_iterations: int = 0
    steps: list[Any] = dataclasses.field(default_factory=list)

    def __init__(
        self, id: str, *, while_: str, max_iterations: int, steps: list[Any], **options: Any
    ) -> None:
        _init(self, id=id, while_=while_, max_iterations=max_iterations, steps=steps, **options)

    def to_data(self) -> dict[str, Any]:
        """The step as definition data."""
        body = {
            "while": self.while_,
            "max_iterations": self.max_iterations,
            "steps": [_data_of(s) for s in self.steps],
        }
        return self._with({"loop": body})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Step(_StepBase):
    """A step of any type by name — a plugin's (entry point group ``legato.step_types``) or a built-in one.

    Options every step takes are keyword arguments as for the other builders; every other keyword is a
    field of the step type's config (``Step("word_count", "count", text="${params.text}", top=2)``).
    """

    kind: ClassVar[str] = ""
    type: str = ""
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __init__(self, type: str, id: str, **options: Any) -> None:
        common = {k: options.pop(k) for k in (*_COMMON, "after") if k in options}
        _init(self, id=id, type=type, config=options, **common)

    def to_data(self) -> dict[str, Any]:
        """The step as definition data."""
        common = self._common_data()
        common["type"] = self.type
        config: dict[str, Any] = {}
        for key, value in self.config.items():
            if key in common:
                raise TypeError(f"step {self.id!r}: config field {key!r} is a step option")
            config[key] = _value(value)
        return {"id": common.pop("id"), "type": common.pop("type"), **config, **common}


def _init(obj: _StepBase, **values: Any) -> None:
    """Set a step builder's fields (frozen dataclasses with a positional id); unknown options raise TypeError."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    after = values.pop("after", None)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise TypeError(
            f"{type(obj).__name__}({values.get('id')!r}): unknown option(s) {', '.join(unknown)}; "
            f"options are {', '.join(sorted(n for n in fields if n not in ('id', 'kind')))}, after"
        )
    for name, field in fields.items():
        if name in values:
            value = values[name]
        elif field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:  # pragma: no cover - every field has a default
            raise TypeError(f"missing {name}")
        object.__setattr__(obj, name, value)
    _StepBase.__post_init__(obj, after)


def step_from_model(step: StepModel) -> _StepBase:
    """The builder object of a normalised step (bodies included)."""
    common = _common_from_model(step)
    match step:
        case NoopStep():
            return Noop(**common)
        case SleepStep():
            duration = step.duration if isinstance(step.duration, str) else _duration_text(step.duration)
            return Sleep(duration=duration, **common)
        case ShellStep():
            return Shell(
                command=step.command,
                env=dict(step.env) or None,
                artifacts=list(step.artifacts) or None,
                **common,
            )
        case PythonStep():
            return Python(function=step.function, **common)
        case HttpStep():
            return Http(
                url=step.url,
                method=None if step.method == "GET" else step.method,
                headers=dict(step.headers) or None,
                body=step.body,
                success_status=list(step.success_status) or None,
                **common,
            )
        case SqlStep():
            return Sql(
                connection=step.connection,
                statements=[Statement(s.sql, list(s.args) or None) for s in step.statements],
                transaction=None if step.transaction else False,
                result=None if step.result == "first" else step.result,
                max_rows=None if step.max_rows == 100 else step.max_rows,
                **common,
            )
        case NotebookStep():
            return Notebook(
                notebook=step.notebook, kernel=None if step.kernel == "python3" else step.kernel, **common
            )
        case PluginStep():
            return Step(step.plugin, **common, **step.config)
        case SubworkflowStep():
            return Subworkflow(workflow=WorkflowRef.from_model(step.subworkflow), **common)
        case ForeachStep():
            spec = step.foreach
            return Foreach(
                over=spec.over,
                as_=None if spec.as_ == "item" else spec.as_,
                concurrency=None if spec.concurrency == 20 else spec.concurrency,
                iteration_on_failure=None
                if spec.on_failure == "finish_others_then_fail"
                else spec.on_failure,
                steps=None if spec.steps is None else [step_from_model(s) for s in spec.steps],
                subworkflow=None if spec.subworkflow is None else WorkflowRef.from_model(spec.subworkflow),
                **common,
            )
        case LoopStep():
            return Loop(
                while_=step.loop.while_,
                max_iterations=step.loop.max_iterations,
                steps=[step_from_model(s) for s in step.loop.steps],
                **common,
            )
    raise TypeError(f"unknown step model {type(step).__name__}")  # pragma: no cover


# ---------------------------------------------------------------------------------- the workflow


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


@dataclasses.dataclass(kw_only=True, eq=True)
class Workflow:
    """A workflow definition built in Python: ``Workflow("daily", run_strategy=Parallel(4)).step(Shell(...))``.

    :meth:`definition` validates it like a YAML file (``DefinitionError`` naming each path) and returns the
    same :class:`~legato.core.model.WorkflowDefinition`; :meth:`to_yaml` writes its canonical YAML.
    """

    id: str
    description: str | None = None
    owner: str | None = None
    tags: list[str] | None = None
    criticality: str | None = None
    run_strategy: _Strategy | str | Mapping[str, Any] | None = None
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
        run_strategy: _Strategy | str | Mapping[str, Any] | None = None,
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
            if not isinstance(item, _StepBase):
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
        _put(out, "description", self.description)
        _put(out, "owner", self.owner)
        _put(out, "tags", _names(self.tags))
        _put(out, "criticality", self.criticality)
        _put(out, "run_strategy", None if self.run_strategy is None else _data_of(self.run_strategy))
        _put(out, "step_concurrency", self.step_concurrency)
        _put(out, "timeout", _duration(self.timeout))
        if self.params is not None:
            out["params"] = {name: _data_of(spec) for name, spec in self.params.items()}
        if self.triggers:
            out["triggers"] = [_data_of(t) for t in self.triggers]
        out["steps"] = [_data_of(s) for s in self.steps]
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
            run_strategy=_strategy_from_model(definition.run_strategy),
            step_concurrency=definition.step_concurrency,
            timeout=None if definition.timeout is None else _duration_text(definition.timeout),
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


def _is_default(field: dataclasses.Field[Any], value: Any) -> bool:
    if field.default is not dataclasses.MISSING:
        return bool(value == field.default)
    if field.default_factory is not dataclasses.MISSING:
        return bool(value == field.default_factory())
    return False


def _compact_repr(self: Any) -> str:
    """The call that builds this object, options left at their default not shown."""
    args: list[str] = []
    for field in dataclasses.fields(self):
        value = getattr(self, field.name)
        if field.name == "id" and isinstance(self, (_StepBase, Workflow)):
            args.insert(0 if not isinstance(self, Step) else 1, repr(value))
        elif isinstance(self, Signals) and field.name == "signals":
            args.extend(repr(s) for s in value)
        elif isinstance(self, Step) and field.name == "type":
            args.insert(0, repr(value))
        elif isinstance(self, Step) and field.name == "config":
            args.extend(f"{k}={v!r}" for k, v in value.items())
        elif not _is_default(field, value):
            args.append(f"{field.name}={value!r}")
    return f"{type(self).__name__}({', '.join(args)})"


for _builder in (
    Param,
    Parallel,
    Backoff,
    Retry,
    Next,
    Signal,
    Publish,
    Cron,
    Signals,
    Noop,
    Sleep,
    Shell,
    Python,
    Http,
    Statement,
    Sql,
    Notebook,
    WorkflowRef,
    Subworkflow,
    Foreach,
    Loop,
    Step,
    Workflow,
):
    _builder.__repr__ = _compact_repr  # type: ignore[method-assign]
