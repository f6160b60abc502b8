"""The workflow definition model: frozen msgspec Structs, normalised by the reader.

Everything here is the *normalised* form: durations are seconds, the run strategy is always a
struct, shorthand params are full ``ParamSpec``s, match predicates are ``{op, value}``, trigger
ids are filled in. Expressions and templates are kept as source text (``"${params.x}"``,
``{"expr": "..."}``); :mod:`legato.core.compiled` compiles them once per version.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

import msgspec

SCHEMA_VERSION: int = 1
"""The only definition schema version accepted today."""

Criticality = Literal["critical", "high", "medium", "low"]
RunStrategyType = Literal[
    "sequential", "strict_sequential", "first_only", "last_only", "serial_latest_only", "parallel"
]
OnFailure = Literal["fail", "ignore", "finish_others_then_fail"]
ParamType = Literal["string", "int", "float", "bool", "date", "datetime", "duration", "list", "map", "secret"]
ParamMode = Literal["overridable", "fixed"]
MatchOp = Literal["=", "!=", ">", ">=", "<", "<=", "in"]
BackoffType = Literal["exponential", "fixed"]
HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]

PARAM_TYPES: tuple[str, ...] = (
    "string",
    "int",
    "float",
    "bool",
    "date",
    "datetime",
    "duration",
    "list",
    "map",
    "secret",
)
RUN_STRATEGIES: tuple[str, ...] = (
    "sequential",
    "strict_sequential",
    "first_only",
    "last_only",
    "serial_latest_only",
    "parallel",
)
STEP_TYPES: tuple[str, ...] = (
    "noop",
    "sleep",
    "shell",
    "python",
    "http",
    "sql",
    "notebook",
    "container",
    "subworkflow",
    "foreach",
    "loop",
)
"""Built-in step types; plugins add more (``legato.core.step_types``)."""
DYNAMIC_STEP_TYPES: frozenset[str] = frozenset({"subworkflow", "foreach", "loop"})
"""Steps the scheduler runs itself; every other type (built-in leaf or plugin) goes to an executor."""
LEAF_STEP_TYPES: frozenset[str] = frozenset(STEP_TYPES) - DYNAMIC_STEP_TYPES
SqlResult = Literal["none", "first", "rows"]
PullPolicy = Literal["missing", "never", "always"]


class RunStrategy(msgspec.Struct, frozen=True, kw_only=True):
    """How runs of one workflow share it (see DESIGN §3); ``max_concurrency`` is 1 unless parallel."""

    type: RunStrategyType = "sequential"
    max_concurrency: int = 1
    """Runs at once; only ``parallel`` may exceed 1, and 0 pauses a parallel workflow."""


class Backoff(msgspec.Struct, frozen=True, kw_only=True):
    """Delay before a retry: exponential ``initial * multiplier**(n-1)`` capped at ``max``, or fixed."""

    type: BackoffType = "exponential"
    initial: float = 1.0
    max: float = 600.0
    multiplier: float = 2.0

    def delay(self, retry_number: int) -> float:
        """Seconds to wait before retry number ``retry_number`` (1 = the first retry)."""
        if self.type == "fixed":
            return self.initial
        delay = min(self.initial, self.max)
        for _ in range(min(max(0, retry_number - 1), 1000)):  # multiply stepwise: ** could overflow
            if delay >= self.max:
                break
            delay = min(delay * self.multiplier, self.max)
        return delay


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Separate retry limits per kind of failure, and the backoff between attempts."""

    error: int = 0
    """Retries after the step itself failed."""
    platform: int = 10
    """Retries after a platform failure (executor lost, ...)."""
    timeout: int = 0
    """Retries after the step timed out."""
    backoff: Backoff = Backoff()


class Transition(msgspec.Struct, frozen=True, kw_only=True):
    """An edge to a successor, taken when ``when`` (SEL, evaluated after this step succeeded) is true."""

    step: str
    when: str | None = None


class ParamSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A typed workflow param: a literal default, or an expression computed at run start.

    Resolution: a value supplied by the run (or its trigger) wins, unless ``mode`` is ``fixed``;
    otherwise ``expr`` is evaluated, else ``default`` is used; a ``required`` param without a
    value fails the run at start; any other param without a value is null.
    """

    type: ParamType
    default: Any = None
    """The default in JSON form (dates as ``YYYY-MM-DD``, durations as seconds)."""
    expr: str | None = None
    required: bool = False
    description: str | None = None
    values: list[Any] | None = None
    """Allowed values (JSON form), when the param is an enumeration."""
    mode: ParamMode = "overridable"
    """``fixed``: a run may not supply it (a constant, or always computed by ``expr``)."""


class MatchPredicate(msgspec.Struct, frozen=True, kw_only=True):
    """``field <op> value`` on a signal's fields; ``in`` takes a list."""

    op: MatchOp = "="
    value: Any = None


class SignalLeg(msgspec.Struct, frozen=True, kw_only=True):
    """One signal of a signal trigger, with predicates on its fields and an optional SEL condition."""

    name: str
    match: dict[str, MatchPredicate] = {}
    when: str | None = None
    """SEL over ``signal.<field>``."""


CatchUp = Literal["none", "latest", "all"]
CATCH_UP_POLICIES: tuple[str, ...] = ("none", "latest", "all")


class CronTrigger(msgspec.Struct, frozen=True, kw_only=True, tag="cron", tag_field="type"):
    """Starts a run at each fire time of a 5-field cron schedule in a time zone."""

    type: ClassVar[str] = "cron"
    id: str
    cron: str
    timezone: str = "UTC"
    params: dict[str, Any] = {}
    """Run params; expressions see ``trigger.fire_time``, ``trigger.id``, ``trigger.kind``."""
    catch_up: CatchUp = "all"
    """After downtime or a pause: run every missed fire (``all``), only the newest (``latest``), or none."""
    max_catch_up: int = 100
    """``catch_up: all``: at most this many missed fires run (the newest); older ones are skipped."""
    start: datetime | None = None
    """No fire before this instant."""
    end: datetime | None = None
    """No fire after this instant."""
    jitter: float = 0.0
    """Seconds: each fire starts up to this much later (a fixed offset per fire time; the key stays)."""


class SignalTrigger(msgspec.Struct, frozen=True, kw_only=True, tag="signal", tag_field="type"):
    """Starts a run once per completed tuple of matching signals, joined on ``join`` keys."""

    type: ClassVar[str] = "signal"
    id: str
    signals: list[SignalLeg]
    join: list[str] = []
    expiry: float = 7 * 86400.0
    """Seconds a partial join waits for its other signals."""
    since: datetime | None = None
    """Consider signals stored since this time when the trigger is registered."""
    params: dict[str, Any] = {}
    """Run params; expressions see ``signals.<name>.<field>`` and ``trigger.*``."""


Trigger = CronTrigger | SignalTrigger


class SignalWait(msgspec.Struct, frozen=True, kw_only=True):
    """A signal a step waits for before it starts; match values may be ``${...}`` templates."""

    name: str
    match: dict[str, MatchPredicate] = {}


class SignalPublish(msgspec.Struct, frozen=True, kw_only=True):
    """A signal a step publishes when it succeeds, with params from expressions."""

    name: str
    params: dict[str, Any] = {}


class SubworkflowRef(msgspec.Struct, frozen=True, kw_only=True):
    """Which workflow a subworkflow (or foreach iteration) runs, and with which params."""

    workflow: str
    version: int | Literal["active"] = "active"
    params: dict[str, Any] = {}
    apply_run_strategy: bool = False
    """True: the child run queues under the child workflow's own run strategy."""


class StepBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Fields common to every step type."""

    id: str
    description: str | None = None
    params: dict[str, Any] = {}
    """Step params (literal, ``"${expr}"`` template, or ``{expr: ...}``), merged over the run's params."""
    depends_on: list[str] = []
    next: list[Transition] = []
    retry: RetryPolicy = RetryPolicy()
    timeout: float | None = None
    """Seconds an attempt may run."""
    on_failure: OnFailure = "fail"
    queue: str = "default"
    concurrency_tags: list[str] = []
    wait_for_signals: list[SignalWait] = []
    publish_signals: list[SignalPublish] = []
    outputs: list[str] = []
    """Declared output names; when declared, references ``steps.<id>.outputs.<name>`` are checked."""


class NoopStep(StepBase, frozen=True, kw_only=True, tag="noop"):
    """Does nothing; a join point or a placeholder."""

    type: ClassVar[str] = "noop"


class SleepStep(StepBase, frozen=True, kw_only=True, tag="sleep"):
    """Waits for ``duration``."""

    type: ClassVar[str] = "sleep"
    duration: float | str
    """Seconds, or a ``${...}`` template giving a duration, a number of seconds or a duration text."""


class ShellStep(StepBase, frozen=True, kw_only=True, tag="shell"):
    """Runs a shell command (a template); outputs are ``name=value`` lines written to ``$LEGATO_OUTPUTS``."""

    type: ClassVar[str] = "shell"
    command: str
    env: dict[str, str] = {}
    """Extra environment variables (templates)."""
    artifacts: list[str] = []
    """Files (paths or globs relative to the step's folder) kept in the executor's artifact store."""


class PythonStep(StepBase, frozen=True, kw_only=True, tag="python"):
    """Calls ``module:function`` with the step's params."""

    type: ClassVar[str] = "python"
    function: str


class HttpStep(StepBase, frozen=True, kw_only=True, tag="http"):
    """Sends an HTTP request; success is a 2xx status unless ``success_status`` says otherwise."""

    type: ClassVar[str] = "http"
    url: str
    method: HttpMethod = "GET"
    headers: dict[str, str] = {}
    body: Any = None
    success_status: list[int] = []


class SqlStatement(msgspec.Struct, frozen=True, kw_only=True):
    """One SQL statement and the values bound to its ``$1, $2, ...`` placeholders (templates)."""

    sql: str
    args: list[Any] = []


class SqlStep(StepBase, frozen=True, kw_only=True, tag="sql"):
    """Runs statements against a named connection, in one transaction unless ``transaction`` is false."""

    type: ClassVar[str] = "sql"
    connection: str
    """The connection's name; the executor holds its URL and credentials (never the definition)."""
    statements: list[SqlStatement]
    transaction: bool = True
    result: SqlResult = "first"
    """What the last statement's rows become in the outputs: nothing, ``row``, or ``rows``."""
    max_rows: int = 100


class NotebookStep(StepBase, frozen=True, kw_only=True, tag="notebook"):
    """Executes a Jupyter notebook (a path on the executor) with the step's params in a parameters cell."""

    type: ClassVar[str] = "notebook"
    notebook: str
    """The ``.ipynb`` file: absolute, or relative to the executor's working directory."""
    kernel: str = "python3"


class ContainerMount(msgspec.Struct, frozen=True, kw_only=True):
    """A host directory or file bind-mounted into a container step (read-only unless told otherwise)."""

    source: str
    """An absolute path on the executor; it must lie under one of the executor's allowed mount roots."""
    target: str
    """An absolute path in the container."""
    read_only: bool = True


class ContainerStep(StepBase, frozen=True, kw_only=True, tag="container"):
    """Runs an image with a command through the executor's container runtime (podman or docker)."""

    type: ClassVar[str] = "container"
    image: str
    command: list[str] = []
    """The container's command and its arguments (templates), passed as an argument list, no shell."""
    env: dict[str, str] = {}
    """Environment variables of the container (templates; secrets stay references until the executor)."""
    mounts: list[ContainerMount] = []
    workdir: str | None = None
    pull: PullPolicy = "missing"
    artifacts: list[str] = []
    """Files the container writes under ``/legato/work`` (the step's folder), kept in the artifact store."""


class PluginStep(StepBase, frozen=True, kw_only=True, tag="plugin"):
    """A step of a type an installed plugin provides; ``config`` was checked against its schema at push."""

    plugin: str
    """The plugin's step type name (what the definition wrote as ``type``)."""
    config: dict[str, Any] = {}

    @property
    def type(self) -> str:
        return self.plugin


class SubworkflowStep(StepBase, frozen=True, kw_only=True, tag="subworkflow"):
    """Runs another workflow as a child run and waits for it."""

    type: ClassVar[str] = "subworkflow"
    subworkflow: SubworkflowRef


class ForeachSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Iterations over the items of ``over``: a body of steps, or a subworkflow, per item."""

    over: str
    as_: str = msgspec.field(default="item", name="as")
    """Param name of the item inside the body (the index is ``params.index``)."""
    concurrency: int = 20
    on_failure: OnFailure = "finish_others_then_fail"
    steps: list[Step] | None = None
    subworkflow: SubworkflowRef | None = None


class ForeachStep(StepBase, frozen=True, kw_only=True, tag="foreach"):
    """Fans out over a list, range or date range."""

    type: ClassVar[str] = "foreach"
    foreach: ForeachSpec


class LoopSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A body repeated while ``while`` holds (checked before each iteration), at most ``max_iterations`` times."""

    while_: str = msgspec.field(name="while")
    max_iterations: int
    steps: list[Step]


class LoopStep(StepBase, frozen=True, kw_only=True, tag="loop"):
    """Repeats its body; the explicit, bounded way to loop (the step graph itself is acyclic)."""

    type: ClassVar[str] = "loop"
    loop: LoopSpec


Step = (
    NoopStep
    | SleepStep
    | ShellStep
    | PythonStep
    | HttpStep
    | SqlStep
    | NotebookStep
    | ContainerStep
    | PluginStep
    | SubworkflowStep
    | ForeachStep
    | LoopStep
)


class WorkflowDefinition(msgspec.Struct, frozen=True, kw_only=True):
    """A normalised, validated workflow definition (one immutable version)."""

    schema: int = SCHEMA_VERSION
    id: str
    description: str | None = None
    owner: str | None = None
    tags: list[str] = []
    criticality: Criticality = "medium"
    run_strategy: RunStrategy = RunStrategy()
    step_concurrency: int | None = None
    """Cap on leaf steps of all runs of this workflow running at once."""
    timeout: float | None = None
    """Seconds a run may take."""
    params: dict[str, ParamSpec] = {}
    triggers: list[Trigger] = []
    steps: list[Step]


def step_body(step: Step) -> list[Step] | None:
    """The nested steps of a foreach or loop step (None for other types, or a foreach over a subworkflow)."""
    if isinstance(step, ForeachStep):
        return step.foreach.steps
    if isinstance(step, LoopStep):
        return step.loop.steps
    return None
