"""Step builders: one per built-in step type, ``Step`` for any type by name (plugins), and the way back
from a normalised step."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from legato.core.model import (
    ContainerStep,
    ForeachStep,
    HttpStep,
    LoopStep,
    NoopStep,
    NotebookStep,
    PluginStep,
    PythonStep,
    ShellStep,
    SleepStep,
    SqlStep,
    SubworkflowStep,
)
from legato.core.model import Step as StepModel
from legato.flow.data import (
    Compact,
    Duration,
    data_of,
    duration_data,
    duration_text,
    function_ref,
    name_list,
    put,
    value_data,
)
from legato.flow.options import Next, Publish, Retry, Signal, WorkflowRef, ref_data

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


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class StepBase(Compact):
    """Options every step type takes (the names of the YAML fields; ``after`` is ``depends_on``)."""

    kind: ClassVar[str]
    repr_positional: ClassVar[tuple[str, ...]] = ("id",)
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
        put(out, "description", self.description)
        put(out, "params", None if self.params is None else value_data(self.params))
        put(out, "depends_on", name_list(self.depends_on))
        if self.next is not None:
            out["next"] = [data_of(n) for n in self.next]
        put(out, "retry", None if self.retry is None else data_of(self.retry))
        put(out, "timeout", duration_data(self.timeout))
        put(out, "on_failure", self.on_failure)
        put(out, "queue", self.queue)
        put(out, "concurrency_tags", name_list(self.concurrency_tags))
        if self.wait_for_signals is not None:
            out["wait_for_signals"] = [
                {"name": w} if isinstance(w, str) else data_of(w) for w in self.wait_for_signals
            ]
        if self.publish_signals is not None:
            out["publish_signals"] = [
                {"name": p} if isinstance(p, str) else data_of(p) for p in self.publish_signals
            ]
        put(out, "outputs", name_list(self.outputs))
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
        "timeout": None if step.timeout is None else duration_text(step.timeout),
        "on_failure": None if step.on_failure == "fail" else step.on_failure,
        "queue": None if step.queue == "default" else step.queue,
        "concurrency_tags": list(step.concurrency_tags) or None,
        "wait_for_signals": [w.name if not w.match else Signal.from_model(w) for w in step.wait_for_signals]
        or None,
        "publish_signals": [p.name if not p.params else Publish.from_model(p) for p in step.publish_signals]
        or None,
        "outputs": list(step.outputs) or None,
    }


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class Noop(StepBase):
    """A step that does nothing: a join point or a placeholder."""

    kind: ClassVar[str] = "noop"

    def __init__(self, id: str, **options: Any) -> None:
        _init(self, id=id, **options)


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class Sleep(StepBase):
    """Waits for ``duration`` (a duration, or a ``${...}`` template giving one)."""

    kind: ClassVar[str] = "sleep"
    duration: Duration = 0

    def __init__(self, id: str, duration: Duration, **options: Any) -> None:
        _init(self, id=id, duration=duration, **options)

    def to_data(self) -> dict[str, Any]:
        """The step as definition data."""
        return self._with({"duration": duration_data(self.duration)})


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class Shell(StepBase):
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
        put(out, "env", None if self.env is None else value_data(self.env))
        put(out, "artifacts", name_list(self.artifacts))
        return self._with(out)


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class Python(StepBase):
    """Calls ``function`` (``"module:function"``, or a module-level function) with the step's params."""

    kind: ClassVar[str] = "python"
    function: str = ""

    def __init__(self, id: str, function: str | Callable[..., Any], **options: Any) -> None:
        _init(self, id=id, function=function_ref(function), **options)

    def to_data(self) -> dict[str, Any]:
        """The step as definition data."""
        return self._with({"function": self.function})


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class Http(StepBase):
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
        put(out, "method", self.method)
        put(out, "headers", None if self.headers is None else value_data(self.headers))
        put(out, "body", value_data(self.body))
        put(out, "success_status", self.success_status)
        return self._with(out)


@dataclasses.dataclass(frozen=True, repr=False)
class Statement(Compact):
    """One SQL statement and the values bound to its ``$1, $2, ...`` (templates allowed in ``args``)."""

    sql: str
    args: list[Any] | None = None

    def to_data(self) -> dict[str, Any]:
        """The statement as definition data."""
        out: dict[str, Any] = {"sql": self.sql}
        put(out, "args", None if self.args is None else value_data(self.args))
        return out


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class Sql(StepBase):
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
        put(out, "sql", self.sql)
        put(out, "args", None if self.args is None else value_data(self.args))
        if self.statements is not None:
            out["statements"] = [data_of(s) for s in self.statements]
        put(out, "transaction", self.transaction)
        put(out, "result", self.result)
        put(out, "max_rows", self.max_rows)
        return self._with(out)


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class Notebook(StepBase):
    """Executes a Jupyter ``notebook`` (a path on the executor) with the step's params injected."""

    kind: ClassVar[str] = "notebook"
    notebook: str = ""
    kernel: str | None = None

    def __init__(self, id: str, notebook: str, **options: Any) -> None:
        _init(self, id=id, notebook=notebook, **options)

    def to_data(self) -> dict[str, Any]:
        """The step as definition data."""
        out: dict[str, Any] = {"notebook": self.notebook}
        put(out, "kernel", self.kernel)
        return self._with(out)


@dataclasses.dataclass(frozen=True, repr=False)
class Mount(Compact):
    """A host path (under the executor's allowed mount roots) bind-mounted into a container step."""

    source: str
    target: str
    read_only: bool | None = None
    """Read-only unless False."""

    def to_data(self) -> dict[str, Any]:
        """The mount as definition data."""
        out: dict[str, Any] = {"source": self.source, "target": self.target}
        put(out, "read_only", self.read_only)
        return out


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class Container(StepBase):
    """Runs ``image`` with ``command`` (an argument list of templates, no shell) through the executor's
    container runtime, with ``env``, ``mounts``, ``workdir``, a ``pull`` policy and ``artifacts``."""

    kind: ClassVar[str] = "container"
    image: str = ""
    command: list[Any] | None = None
    env: Mapping[str, Any] | None = None
    mounts: list[Mount | Mapping[str, Any]] | None = None
    workdir: str | None = None
    pull: str | None = None
    artifacts: list[str] | None = None

    def __init__(self, id: str, image: str, **options: Any) -> None:
        _init(self, id=id, image=image, **options)

    def to_data(self) -> dict[str, Any]:
        """The step as definition data."""
        out: dict[str, Any] = {"image": self.image}
        put(out, "command", None if self.command is None else value_data(self.command))
        put(out, "env", None if self.env is None else value_data(self.env))
        if self.mounts is not None:
            out["mounts"] = [data_of(m) for m in self.mounts]
        put(out, "workdir", self.workdir)
        put(out, "pull", self.pull)
        put(out, "artifacts", name_list(self.artifacts))
        return self._with(out)


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class Subworkflow(StepBase):
    """Runs another workflow as a child run and waits for it (``workflow``: an id or a :class:`WorkflowRef`)."""

    kind: ClassVar[str] = "subworkflow"
    workflow: WorkflowRef | str = ""

    def __init__(self, id: str, workflow: WorkflowRef | str, **options: Any) -> None:
        _init(self, id=id, workflow=workflow, **options)

    def to_data(self) -> dict[str, Any]:
        """The step as definition data."""
        return self._with({"subworkflow": ref_data(self.workflow)})


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class Foreach(StepBase):
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
        put(spec, "as", self.as_)
        put(spec, "concurrency", self.concurrency)
        put(spec, "on_failure", self.iteration_on_failure)
        if self.steps is not None:
            spec["steps"] = [data_of(s) for s in self.steps]
        if self.subworkflow is not None:
            spec["subworkflow"] = ref_data(self.subworkflow)
        return self._with({"foreach": spec})


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class Loop(StepBase):
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
            "steps": [data_of(s) for s in self.steps],
        }
        return self._with({"loop": body})


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class Step(StepBase):
    """A step of any type by name — a plugin's (entry point group ``legato.step_types``) or a built-in one.

    Options every step takes are keyword arguments as for the other builders; every other keyword is a
    field of the step type's config (``Step("word_count", "count", text="${params.text}", top=2)``).
    """

    kind: ClassVar[str] = ""
    repr_positional: ClassVar[tuple[str, ...]] = ("type", "id")
    repr_kwargs: ClassVar[str | None] = "config"
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
            config[key] = value_data(value)
        return {"id": common.pop("id"), "type": common.pop("type"), **config, **common}


def _init(obj: StepBase, **values: Any) -> None:
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
    StepBase.__post_init__(obj, after)


def step_from_model(step: StepModel) -> StepBase:
    """The builder object of a normalised step (bodies included)."""
    common = _common_from_model(step)
    match step:
        case NoopStep():
            return Noop(**common)
        case SleepStep():
            duration = step.duration if isinstance(step.duration, str) else duration_text(step.duration)
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
        case ContainerStep():
            return Container(
                image=step.image,
                command=list(step.command) or None,
                env=dict(step.env) or None,
                mounts=[Mount(m.source, m.target, None if m.read_only else False) for m in step.mounts]
                or None,
                workdir=step.workdir,
                pull=None if step.pull == "missing" else step.pull,
                artifacts=list(step.artifacts) or None,
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
