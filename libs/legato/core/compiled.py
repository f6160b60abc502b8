"""Compiled workflows: a definition checked as a whole and its expressions compiled once.

:func:`compile_workflow` builds a :class:`CompiledWorkflow` per definition version (the scheduler
caches it); the same pass run on an unchecked definition yields the graph and expression issues
that :func:`legato.core.definitions.parse_definition` reports.

Evaluation rules, in one place:

* run params: defaults < values supplied by the run or its trigger < nothing else; ``expr`` params
  are computed in dependency order (their ``now()`` is the run's start time) unless supplied;
* step params are evaluated against the run params, then merged over them for that step: the
  step's type-specific fields (``command``, ``url``...) see the merged params;
* a ``when`` must give true or false; a foreach ``over`` a list, range or date range (≤ 1,000,000
  items, ranges stay lazy); a loop's ``while`` is checked before each iteration.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from legato.core.cron import CronSchedule
from legato.core.errors import DefinitionError, DefinitionIssue, ParamError
from legato.core.expressions import (
    ConstNode,
    ListNode,
    MapNode,
    Scope,
    ValueNode,
    check_references,
    compile_condition,
    compile_value,
)
from legato.core.graph import StepGraph, build_graph
from legato.core.model import (
    ContainerStep,
    CronTrigger,
    ForeachStep,
    HttpStep,
    LoopStep,
    MatchOp,
    MatchPredicate,
    NotebookStep,
    ParamSpec,
    PluginStep,
    PythonStep,
    RetryPolicy,
    ShellStep,
    SignalTrigger,
    SleepStep,
    SqlStep,
    Step,
    SubworkflowRef,
    SubworkflowStep,
    WorkflowDefinition,
    step_body,
)
from legato.core.param_limits import param_limit_issues
from legato.core.reader import at
from legato.core.secrets import secret_name_of, secret_ref
from legato.core.shell_command import compile_shell_command
from legato.core.signals import signal_matches
from legato.core.values import coerce, to_json_value
from legato.sel import DateRange, Expression, SelError, SelEvalError, SelLimitError, type_name
from legato.sel.durations import parse_duration_text
from legato.sel.lib_time import zone

MAX_FOREACH_ITEMS = 1_000_000


# ---------------------------------------------------------------------------- runtime inputs and outputs


class InstanceInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The run, as expressions see it under ``instance.*``."""

    id: str
    workflow_id: str
    version: int
    start_time: datetime
    trigger: dict[str, Any] = {}
    """How the run started: ``kind`` (cron, signal, api, ...), ``id``, and whatever the trigger adds."""

    def namespace(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "workflow_id": self.workflow_id,
            "version": self.version,
            "start_time": self.start_time,
            "trigger": self.trigger,
        }


class EvalEnv(msgspec.Struct, kw_only=True):
    """What expressions of a running step see; the namespace is exactly these roots.

    ``steps`` maps step id -> ``{"outputs": {...}, "status": "..."}``; inside a body, include the
    steps of enclosing graphs too (body steps win on a shared id). ``now`` fixes ``now()``.
    """

    params: dict[str, Any] = {}
    steps: Mapping[str, Any] = {}
    signals: dict[str, Any] = {}
    instance: dict[str, Any] = {}
    iteration: dict[str, Any] | None = None
    """Inside a loop: ``{"index": i, "outputs": {step_id: outputs of the previous iteration}}``."""
    now: datetime | None = None

    def namespace(self) -> dict[str, Any]:
        ns: dict[str, Any] = {
            "params": self.params,
            "steps": self.steps,
            "signals": self.signals,
            "instance": self.instance,
        }
        if self.iteration is not None:
            ns["iteration"] = self.iteration
        return ns


@dataclass(frozen=True, slots=True)
class Edge:
    """An edge of a step graph; ``when`` (None = always) is evaluated once ``source`` succeeded."""

    source: str
    target: str
    when: Expression | None


class ResolvedStep(msgspec.Struct, frozen=True, kw_only=True):
    """A step ready to dispatch: its params and type-specific config evaluated.

    ``config`` by type: sleep ``{duration}`` (seconds); shell ``{command, env}``; python
    ``{function}``; http ``{url, method, headers, body, success_status}``; sql ``{connection,
    statements: [{sql, args}], transaction, result, max_rows}``; notebook ``{notebook, kernel}``;
    container ``{image, command, env, mounts, pull, workdir, artifacts}``; a plugin's step its own fields; subworkflow ``{workflow,
    version, params, apply_run_strategy}``; foreach ``{as, concurrency, on_failure}``; loop
    ``{max_iterations}``; noop ``{}``. Values are typed (dates stay dates): use ``to_json_value``.
    """

    step_id: str
    type: str
    params: dict[str, Any]
    config: dict[str, Any]
    retry: RetryPolicy
    timeout: float | None
    queue: str
    outputs: list[str]
    on_failure: str = "fail"
    concurrency_tags: list[str] = []


class ResolvedSignalWait(msgspec.Struct, frozen=True, kw_only=True):
    """A signal a step waits for, with its match values evaluated for this run."""

    name: str
    match: dict[str, MatchPredicate]


class PublishedSignal(msgspec.Struct, frozen=True, kw_only=True):
    """A signal to publish after a step succeeded; ``params`` in JSON form."""

    name: str
    params: dict[str, Any]


# ---------------------------------------------------------------------------- compiled parts


@dataclass(slots=True)
class _CompiledParam:
    name: str
    spec: ParamSpec
    default: Any
    values: list[Any] | None
    expr: Expression | None
    depends_on: frozenset[str]


@dataclass(slots=True)
class _CompiledTrigger:
    trigger: CronTrigger | SignalTrigger
    path: str
    params: dict[str, ValueNode]
    schedule: CronSchedule | None
    leg_conditions: dict[str, Expression | None]


@dataclass(slots=True)
class _CompiledStep:
    step: Step
    path: str
    params: dict[str, ValueNode]
    config: dict[str, ValueNode]
    waits: list[tuple[str, dict[str, tuple[MatchOp, ValueNode]]]]
    publishes: list[tuple[str, dict[str, ValueNode]]]
    over: Expression | None = None
    condition: Expression | None = None
    body: CompiledWorkflow | None = None
    foreach_ref: dict[str, ValueNode] | None = None


class _Visible(Mapping[str, "frozenset[str] | None"]):
    """Steps an expression may read -> their declared outputs: its upstream steps in its own graph
    (an ancestor bitmask, so nothing is copied per step) over those visible in enclosing graphs.
    A body step shadows an outer step of the same id."""

    __slots__ = ("_graph", "_mask", "_outer", "_outputs")

    def __init__(
        self,
        graph: StepGraph,
        mask: int,
        outputs: Mapping[str, frozenset[str] | None],
        outer: Mapping[str, frozenset[str] | None],
    ) -> None:
        self._graph = graph
        self._mask = mask
        self._outputs = outputs
        self._outer = outer

    def including(self, step_id: str) -> _Visible:
        """The same view plus ``step_id`` itself (a step's own outputs, once it has run)."""
        return _Visible(self._graph, self._mask | 1 << self._graph.bits[step_id], self._outputs, self._outer)

    def __getitem__(self, key: str) -> frozenset[str] | None:
        bit = self._graph.bits.get(key)
        if bit is None:
            return self._outer[key]
        if self._mask >> bit & 1:
            return self._outputs[key]
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        mask = self._mask
        while mask:
            low = mask & -mask
            yield self._graph.ids[low.bit_length() - 1]
            mask ^= low
        yield from (k for k in self._outer if k not in self._graph.bits)

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclass(frozen=True, slots=True)
class _BodyContext:
    params: frozenset[str]
    outer: Mapping[str, frozenset[str] | None]
    iteration: frozenset[str] | None
    foreach_vars: frozenset[str] = frozenset()


# ---------------------------------------------------------------------------- the compiled workflow


class CompiledWorkflow:
    """A checked definition with every expression compiled; one per version, or per foreach/loop body."""

    definition: WorkflowDefinition
    roots: list[str]
    """Steps with no predecessors, in definition order."""
    topo_order: list[str]
    """Every step, predecessors first (definition order breaks ties)."""
    path: str
    """Where this graph sits: ``steps`` at the top, ``steps[3].foreach.steps`` for a body."""
    foreach_vars: frozenset[str]
    """Params the enclosing foreach bodies add (item name and ``index``)."""

    def __init__(
        self,
        definition: WorkflowDefinition,
        path: str,
        graph: StepGraph,
        steps: dict[str, _CompiledStep],
        edges: list[Edge],
        root: CompiledWorkflow | None,
        foreach_vars: frozenset[str],
    ) -> None:
        self.definition = definition
        self.path = path
        self.foreach_vars = foreach_vars
        self._graph = graph
        self._steps = steps
        self._root = root or self
        self.topo_order = list(graph.order)
        self._pred: dict[str, list[Edge]] = {sid: [] for sid in graph.ids}
        self._succ: dict[str, list[Edge]] = {sid: [] for sid in graph.ids}
        position = graph.positions
        for edge in sorted(edges, key=lambda e: (position[e.source], position[e.target])):  # definition order
            self._pred[edge.target].append(edge)
            self._succ[edge.source].append(edge)
        self.roots = [sid for sid in self.topo_order if not self._pred[sid]]
        self._params: list[_CompiledParam] = []
        self._triggers: dict[str, _CompiledTrigger] = {}

    # ------------------------------------------------------------------ structure

    def _compiled(self, step_id: str) -> _CompiledStep:
        try:
            return self._steps[step_id]
        except KeyError:
            raise KeyError(f"no step {step_id!r} in {self.path}") from None

    def step(self, step_id: str) -> Step:
        """The step definition (of this graph: top-level steps, or this body's)."""
        return self._compiled(step_id).step

    def step_path(self, step_id: str) -> str:
        """Where the step sits in the definition: ``steps[2]``."""
        return self._compiled(step_id).path

    def predecessors(self, step_id: str) -> list[Edge]:
        """Edges into the step."""
        self._compiled(step_id)
        return list(self._pred[step_id])

    def successors(self, step_id: str) -> list[Edge]:
        """Edges out of the step."""
        self._compiled(step_id)
        return list(self._succ[step_id])

    def body(self, step_id: str) -> CompiledWorkflow:
        """The compiled body of a foreach or loop step."""
        body = self._compiled(step_id).body
        if body is None:
            raise ValueError(f"step {step_id!r} has no body of steps")
        return body

    def upstream(self, step_id: str) -> list[str]:
        """Ancestors of a step in this graph, in definition order."""
        self._compiled(step_id)
        return self._graph.upstream(step_id)

    def trigger_ids(self) -> list[str]:
        return list(self._root._triggers)

    def schedule(self, trigger_id: str) -> CronSchedule:
        """The parsed schedule of a cron trigger."""
        schedule = self._trigger(trigger_id).schedule
        if schedule is None:
            raise ValueError(f"trigger {trigger_id!r} is not a cron trigger")
        return schedule

    def _trigger(self, trigger_id: str) -> _CompiledTrigger:
        try:
            return self._root._triggers[trigger_id]
        except KeyError:
            raise KeyError(f"no trigger {trigger_id!r} in workflow {self.definition.id!r}") from None

    # ------------------------------------------------------------------ params

    def resolve_run_params(
        self,
        supplied: Mapping[str, Any],
        *,
        instance: InstanceInfo,
        signals: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Typed run params: defaults < ``supplied`` (JSON or CLI text, coerced), then ``expr`` params.

        Raises :class:`ParamError` listing every undeclared, missing, uncoercible or failing param.
        """
        root = self._root
        specs = root.definition.params
        issues: list[DefinitionIssue] = []
        for name in supplied:
            if name not in specs:
                hint = difflib.get_close_matches(name, list(specs), n=1)
                issues.append(
                    DefinitionIssue(
                        f"params.{name}",
                        "not a declared param" + (f" (did you mean {hint[0]!r}?)" if hint else ""),
                    )
                )
        values: dict[str, Any] = {}
        failed: set[str] = set()
        env = {"params": values, "instance": instance.namespace(), "signals": dict(signals or {})}
        for cp in root._params:
            path = f"params.{cp.name}"
            if cp.depends_on & failed:
                failed.add(cp.name)
                continue
            given = supplied.get(cp.name)
            try:
                if given is not None:
                    if cp.spec.mode == "fixed":
                        raise ValueError("fixed by the definition: a run cannot set it")
                    value = coerce(given, cp.spec.type)
                elif cp.expr is not None:
                    try:
                        result = cp.expr.evaluate(env, now=instance.start_time)
                    except SelError as exc:
                        raise ValueError(exc.describe()) from None
                    try:
                        value = coerce(result, cp.spec.type)
                    except ValueError as exc:
                        raise ValueError(f"its expr gave {type_name(result)}: {exc}") from None
                elif cp.default is not None:
                    value = copy.deepcopy(cp.default)  # callers may mutate lists and maps
                elif cp.spec.required:
                    raise ValueError("required: the run must supply a value")
                else:
                    value = None
                if cp.values is not None and value is not None and value not in cp.values:
                    allowed = ", ".join(str(to_json_value(v)) for v in cp.values)
                    raise ValueError(f"must be one of {allowed}, got {to_json_value(value)!r}")
            except ValueError as exc:
                issues.append(DefinitionIssue(path, str(exc)))
                failed.add(cp.name)
                continue
            values[cp.name] = value
        issues.extend(param_limit_issues(values))
        if issues:
            raise ParamError(issues)
        return values

    def trigger_params(
        self,
        trigger_id: str,
        *,
        fire_time: datetime | None = None,
        signals: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Run params a trigger supplies (typed), from ``trigger.fire_time``/``trigger.id`` and ``signals``."""
        compiled = self._trigger(trigger_id)
        env = {
            "trigger": {"id": trigger_id, "kind": compiled.trigger.type, "fire_time": fire_time},
            "signals": dict(signals or {}),
        }
        specs = self._root.definition.params
        out: dict[str, Any] = {}
        issues: list[DefinitionIssue] = []
        for name, node in compiled.params.items():
            path = at(at(compiled.path, "params"), name)
            try:
                out[name] = coerce(node.evaluate(env, now=fire_time), specs[name].type)
            except SelError as exc:
                issues.append(DefinitionIssue(path, exc.describe()))
            except ValueError as exc:
                issues.append(DefinitionIssue(path, str(exc)))
        if issues:
            raise ParamError(issues)
        return out

    def signal_leg_accepts(self, trigger_id: str, name: str, fields: Mapping[str, Any]) -> bool:
        """True when a signal's fields pass the leg's ``match`` predicates and its ``when`` condition."""
        compiled = self._trigger(trigger_id)
        if not isinstance(compiled.trigger, SignalTrigger):
            raise ValueError(f"trigger {trigger_id!r} is not a signal trigger")
        leg = next((leg for leg in compiled.trigger.signals if leg.name == name), None)
        if leg is None:
            raise KeyError(f"trigger {trigger_id!r} has no signal {name!r}")
        if not signal_matches(leg.match, fields):
            return False
        condition = compiled.leg_conditions.get(name)
        return condition is None or _as_bool(condition, condition.evaluate({"signal": dict(fields)}))

    # ------------------------------------------------------------------ steps

    def resolve_step(self, step_id: str, env: EvalEnv) -> ResolvedStep:
        """Evaluate a step's params (merged over ``env.params``) and its type-specific config.

        Raises :class:`SelError` when an expression fails and :class:`ParamError` when a step
        param cannot be coerced to the type of the workflow param of the same name.
        """
        cs = self._compiled(step_id)
        step = cs.step
        ns = env.namespace()
        step_params = self._step_params(cs, ns, env.now)
        merged = {**env.params, **step_params}
        config_ns = {**ns, "params": merged}
        values = {name: node.evaluate(config_ns, now=env.now) for name, node in cs.config.items()}
        return ResolvedStep(
            step_id=step.id,
            type=step.type,
            params=merged,
            config=_finish_config(cs, values),
            retry=step.retry,
            timeout=step.timeout,
            queue=step.queue,
            outputs=list(step.outputs),
            on_failure=step.on_failure,
            concurrency_tags=list(step.concurrency_tags),
        )

    def _step_params(self, cs: _CompiledStep, ns: Mapping[str, Any], now: datetime | None) -> dict[str, Any]:
        specs = self._root.definition.params
        out: dict[str, Any] = {}
        issues: list[DefinitionIssue] = []
        for name, node in cs.params.items():
            value = node.evaluate(ns, now=now)
            spec = specs.get(name)
            if spec is not None and value is not None:
                try:
                    value = coerce(value, spec.type)
                except ValueError as exc:
                    issues.append(DefinitionIssue(at(at(cs.path, "params"), name), str(exc)))
                    continue
            out[name] = value
        if issues:
            raise ParamError(issues)
        return out

    def edge_active(self, edge: Edge, env: EvalEnv) -> bool:
        """Whether an edge is taken: its ``when`` (true or false; None means always)."""
        if edge.when is None:
            return True
        return _as_bool(edge.when, edge.when.evaluate(env.namespace(), now=env.now))

    def foreach_items(self, step_id: str, env: EvalEnv) -> Sequence[Any]:
        """The items a foreach step iterates over; ranges and date ranges stay lazy (≤ 1,000,000 items)."""
        cs = self._compiled(step_id)
        if cs.over is None:
            raise ValueError(f"step {step_id!r} is not a foreach step")
        items = cs.over.evaluate(env.namespace(), now=env.now)
        return _foreach_sequence(cs.over, items)

    def foreach_env(self, step_id: str, env: EvalEnv, index: int, item: Any) -> EvalEnv:
        """The env of one iteration: ``params.<as>`` is the item and ``params.index`` its position."""
        step = self._compiled(step_id).step
        if not isinstance(step, ForeachStep):
            raise ValueError(f"step {step_id!r} is not a foreach step")
        params = {**env.params, step.foreach.as_: item, "index": index}
        return msgspec.structs.replace(env, params=params)

    def foreach_subworkflow(self, step_id: str, env: EvalEnv) -> dict[str, Any]:
        """For a foreach over a subworkflow: the child run of one iteration (env from :meth:`foreach_env`)."""
        cs = self._compiled(step_id)
        if cs.foreach_ref is None:
            raise ValueError(f"step {step_id!r} is not a foreach over a subworkflow")
        ns = env.namespace()
        return {name: node.evaluate(ns, now=env.now) for name, node in cs.foreach_ref.items()}

    def loop_env(self, step_id: str, env: EvalEnv, index: int, outputs: Mapping[str, Any]) -> EvalEnv:
        """The env of loop iteration ``index``; ``outputs`` are the previous iteration's body outputs."""
        self._compiled(step_id)
        return msgspec.structs.replace(env, iteration={"index": index, "outputs": dict(outputs)})

    def loop_should_continue(self, step_id: str, env: EvalEnv) -> bool:
        """Whether a loop runs another iteration: below ``max_iterations`` and its ``while`` holds."""
        cs = self._compiled(step_id)
        step = cs.step
        if not isinstance(step, LoopStep) or cs.condition is None:
            raise ValueError(f"step {step_id!r} is not a loop step")
        iteration = env.iteration if env.iteration is not None else {"index": 0, "outputs": {}}
        index = iteration.get("index", 0)
        if not isinstance(index, int) or index >= step.loop.max_iterations:
            return False
        ns = {**env.namespace(), "iteration": iteration}
        return _as_bool(cs.condition, cs.condition.evaluate(ns, now=env.now))

    def resolve_signal_waits(self, step_id: str, env: EvalEnv) -> list[ResolvedSignalWait]:
        """The signals a step waits for, with match values evaluated (templates over params...)."""
        cs = self._compiled(step_id)
        ns = env.namespace()
        out = []
        for name, predicates in cs.waits:
            match = {
                f: MatchPredicate(op=op, value=to_json_value(node.evaluate(ns, now=env.now)))
                for f, (op, node) in predicates.items()
            }
            out.append(ResolvedSignalWait(name=name, match=match))
        return out

    def resolve_published_signals(self, step_id: str, env: EvalEnv) -> list[PublishedSignal]:
        """Signals to publish after a step succeeded (``env.steps`` includes the step's own outputs)."""
        cs = self._compiled(step_id)
        ns = env.namespace()
        return [
            PublishedSignal(
                name=name, params={k: to_json_value(n.evaluate(ns, now=env.now)) for k, n in params.items()}
            )
            for name, params in cs.publishes
        ]


def _as_bool(expression: Expression, value: Any) -> bool:
    if type(value) is not bool:
        raise SelEvalError(
            f"a condition must be true or false, got {type_name(value)}",
            expression=expression.source,
            path=expression.path,
        )
    return value


def _foreach_sequence(over: Expression, items: Any) -> Sequence[Any]:
    if type(items) in (set, frozenset):
        items = sorted(items, key=lambda v: (type(v).__name__, v))
    if type(items) not in (list, tuple, range, DateRange):
        raise SelEvalError(
            f"foreach over needs a list, range or date range, got {type_name(items)}",
            expression=over.source,
            path=over.path,
        )
    try:
        size = len(items)
    except OverflowError:
        size = MAX_FOREACH_ITEMS + 1
    if size > MAX_FOREACH_ITEMS:
        raise SelLimitError(
            f"foreach over {size} items exceeds the limit of {MAX_FOREACH_ITEMS}",
            limit="foreach_items",
            expression=over.source,
            path=over.path,
        )
    return items  # type: ignore[no-any-return]


def _finish_config(cs: _CompiledStep, values: dict[str, Any]) -> dict[str, Any]:
    """Type-specific checks on evaluated config values (a sleep's duration in seconds...)."""
    step = cs.step
    if isinstance(step, SleepStep):
        values["duration"] = _seconds(values["duration"], at(cs.path, "duration"))
    elif isinstance(step, ShellStep):
        values["command"] = _text(values["command"])
        # A secret stays a reference: the executor puts its value in the variable.
        values["env"] = {
            k: secret_ref(name) if (name := secret_name_of(v)) is not None else _text(v)
            for k, v in values["env"].items()
        }
    elif isinstance(step, ContainerStep):
        values["command"] = [_text(arg) for arg in values["command"]]
        values["env"] = {
            k: secret_ref(name) if (name := secret_name_of(v)) is not None else _text(v)
            for k, v in values["env"].items()
        }
    elif isinstance(step, HttpStep):
        values["url"] = _text(values["url"])
        values["headers"] = {k: _text(v) for k, v in values["headers"].items()}
    return values


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    rendered = to_json_value(value)
    return rendered if isinstance(rendered, str) else msgspec.json.encode(rendered).decode()


def _seconds(value: Any, path: str) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError(f"expected a duration, got {value!r}")
        if isinstance(value, (int, float)):
            seconds = float(value)
        elif isinstance(value, str):
            seconds = parse_duration_text(value)
        elif hasattr(value, "total_seconds"):
            seconds = float(value.total_seconds())
        else:
            raise ValueError(f"expected a duration, got {type_name(value)}")
        if seconds < 0:
            raise ValueError(f"must not be negative, got {seconds:g}s")
    except ValueError as exc:
        raise ParamError([DefinitionIssue(path, str(exc))]) from None
    return seconds


# ---------------------------------------------------------------------------- building


def _all_step_ids(steps: Sequence[Step]) -> set[str]:
    out: set[str] = set()
    for step in steps:
        out.add(step.id)
        body = step_body(step)
        if body:
            out |= _all_step_ids(body)
    return out


class _Builder:
    """Checks a definition as a whole and compiles it; ``issues`` collects every problem."""

    def __init__(self, definition: WorkflowDefinition) -> None:
        self.defn = definition
        self.issues: list[DefinitionIssue] = []
        self.known_steps = frozenset(_all_step_ids(definition.steps))
        self.signal_legs = frozenset(
            leg.name for t in definition.triggers if isinstance(t, SignalTrigger) for leg in t.signals
        )

    def build(self) -> CompiledWorkflow:
        params = self.compile_params()
        triggers = self.compile_triggers()
        context = _BodyContext(params=frozenset(self.defn.params), outer={}, iteration=None)
        top = self.compile_body(self.defn.steps, "steps", context, None)
        top._params = params
        top._triggers = triggers
        _link_root(top, top)
        return top

    def value(self, raw: Any, path: str, scope: Scope) -> ValueNode:
        node = compile_value(raw, path, self.issues)
        for expr_path, expression in node.expressions():
            check_references(expression.references, expr_path, scope, self.issues)
        return node

    def value_map(self, raw: Mapping[str, Any], path: str, scope: Scope) -> MapNode | ConstNode:
        """A map whose keys are names (env vars, headers, params): an ``expr`` key is a name here."""
        items = {k: self.value(v, at(path, k), scope) for k, v in raw.items()}
        if all(isinstance(i, ConstNode) for i in items.values()):
            return ConstNode({k: i.evaluate({}) for k, i in items.items()})
        return MapNode(items)

    def condition(self, source: str, path: str, scope: Scope) -> Expression | None:
        expression = compile_condition(source, path, self.issues)
        if expression is not None:
            check_references(expression.references, path, scope, self.issues)
        return expression

    # ------------------------------------------------------------------ params and triggers

    def compile_params(self) -> list[_CompiledParam]:
        declared = frozenset(self.defn.params)
        scope = Scope(
            owner="param expressions",
            params=declared,
            instance=True,
            signals=self.signal_legs,
            extra={"steps": "param expressions run at run start, before any step"},
        )
        compiled: dict[str, _CompiledParam] = {}
        for name, spec in self.defn.params.items():
            path = f"params.{name}"
            default = _typed(spec.default, spec, at(path, "default"), self.issues)
            values = None
            if spec.values is not None:
                values = [_typed(v, spec, at(path, "values"), self.issues) for v in spec.values]
            expr = None
            deps: frozenset[str] = frozenset()
            if spec.expr is not None:
                expr = self.condition(spec.expr, at(path, "expr"), scope)
                if expr is not None:
                    if ("params",) in expr.references:
                        self.issues.append(
                            DefinitionIssue(
                                at(path, "expr"), "name params statically (params.x) so they can be ordered"
                            )
                        )
                    deps = frozenset(r[1] for r in expr.references if r[0] == "params" and len(r) > 1)
            compiled[name] = _CompiledParam(name, spec, default, values, expr, deps & declared)
        return self.order_params(compiled)

    def order_params(self, compiled: dict[str, _CompiledParam]) -> list[_CompiledParam]:
        """Dependency order of param expressions; a cycle is reported with its path."""
        order: list[_CompiledParam] = []
        state: dict[str, int] = {}  # 1 = visiting, 2 = done
        reported: set[str] = set()

        def visit(name: str, trail: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cycle = [*trail[trail.index(name) :], name]
                if not reported & set(cycle):
                    reported.update(cycle)
                    self.issues.append(
                        DefinitionIssue(
                            f"params.{cycle[0]}.expr", f"cycle in param expressions: {' -> '.join(cycle)}"
                        )
                    )
                return
            state[name] = 1
            for dep in sorted(compiled[name].depends_on):
                visit(dep, [*trail, name])
            state[name] = 2
            order.append(compiled[name])

        for name in compiled:
            visit(name, [])
        return order

    def compile_triggers(self) -> dict[str, _CompiledTrigger]:
        out: dict[str, _CompiledTrigger] = {}
        for i, trigger in enumerate(self.defn.triggers):
            path = f"triggers[{i}]"
            if trigger.id in out:
                self.issues.append(DefinitionIssue(at(path, "id"), f"duplicate trigger id {trigger.id!r}"))
                continue
            owner = f"trigger {trigger.id!r}"
            extra = {
                "params": "trigger params are computed before the run exists: use trigger.* and signals.*"
            }
            legs = (
                frozenset(leg.name for leg in trigger.signals) if isinstance(trigger, SignalTrigger) else None
            )
            scope = Scope(owner=owner, trigger=True, signals=legs, extra=extra)
            params: dict[str, ValueNode] = {}
            for name, raw in trigger.params.items():
                p = at(at(path, "params"), name)
                if name not in self.defn.params:
                    hint = difflib.get_close_matches(name, list(self.defn.params), n=1)
                    self.issues.append(
                        DefinitionIssue(
                            p, "not a declared param" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                        )
                    )
                    continue
                node = self.value(raw, p, scope)
                if node.is_constant:
                    _typed(node.evaluate({}), self.defn.params[name], p, self.issues)
                params[name] = node
            schedule = None
            conditions: dict[str, Expression | None] = {}
            if isinstance(trigger, CronTrigger):
                tz = trigger.timezone
                try:
                    zone(tz)
                except ValueError as exc:
                    self.issues.append(DefinitionIssue(at(path, "timezone"), str(exc)))
                    tz = "UTC"  # still check the schedule itself
                try:
                    schedule = CronSchedule.parse(trigger.cron, tz)
                except ValueError as exc:
                    self.issues.append(DefinitionIssue(at(path, "cron"), str(exc)))
            else:
                for j, leg in enumerate(trigger.signals):
                    when = None
                    if leg.when is not None:
                        leg_scope = Scope(owner=f"signal {leg.name!r}", signal=True)
                        when = self.condition(leg.when, at(at(at(path, "signals"), j), "when"), leg_scope)
                    conditions[leg.name] = when
            out[trigger.id] = _CompiledTrigger(trigger, path, params, schedule, conditions)
        return out

    # ------------------------------------------------------------------ bodies and steps

    def compile_body(
        self, steps: Sequence[Step], path: str, context: _BodyContext, root: CompiledWorkflow | None
    ) -> CompiledWorkflow:
        graph = build_graph(steps, path, self.issues)
        first = {sid: steps[pos] for sid, pos in graph.positions.items()}
        outputs = {sid: (frozenset(s.outputs) or None) for sid, s in first.items()}
        compiled_steps: dict[str, _CompiledStep] = {}
        for sid in graph.ids:
            step = first[sid]
            upstream = _Visible(graph, graph.ancestors.get(sid, 0), outputs, context.outer)
            compiled_steps[sid] = self.compile_step(
                step, at(path, graph.positions[sid]), context, upstream, outputs
            )
        edges = []
        for raw in graph.edges:
            when = None
            if raw.when is not None and raw.path is not None:
                mask = graph.ancestors.get(raw.source, 0) | 1 << graph.bits[raw.source]
                visible = _Visible(graph, mask, outputs, context.outer)
                scope = self.scope(
                    f"the edge {raw.source} -> {raw.target}", context, visible, signals=frozenset()
                )
                when = self.condition(raw.when, raw.path, scope)
            edges.append(Edge(raw.source, raw.target, when))
        return CompiledWorkflow(self.defn, path, graph, compiled_steps, edges, root, context.foreach_vars)

    def scope(
        self,
        owner: str,
        context: _BodyContext,
        steps: Mapping[str, frozenset[str] | None],
        *,
        signals: frozenset[str],
        params: frozenset[str] | None = None,
        iteration: frozenset[str] | None = None,
    ) -> Scope:
        hint = ""
        if context.foreach_vars:
            hint = f" (foreach adds {', '.join(sorted(context.foreach_vars))})"
        return Scope(
            owner=owner,
            params=params if params is not None else context.params,
            steps=steps,
            known_steps=self.known_steps,
            signals=signals,
            instance=True,
            iteration=iteration if iteration is not None else context.iteration,
            param_hint=hint,
            extra={"signals": "signals.* is available in steps that wait_for_signals them"},
        )

    def compile_step(
        self,
        step: Step,
        path: str,
        context: _BodyContext,
        upstream: _Visible,
        outputs: Mapping[str, frozenset[str] | None],
    ) -> _CompiledStep:
        owner = f"step {step.id!r}"
        waits = frozenset(w.name for w in step.wait_for_signals)
        own_params = context.params | frozenset(step.params)
        param_scope = self.scope(owner, context, upstream, signals=waits)
        config_scope = self.scope(owner, context, upstream, signals=waits, params=own_params)
        params = {k: self.value(v, at(at(path, "params"), k), param_scope) for k, v in step.params.items()}
        config = self.compile_config(step, path, config_scope)
        wait_scope = self.scope(owner, context, upstream, signals=frozenset())
        waits_compiled = []
        for j, wait in enumerate(step.wait_for_signals):
            w_path = at(at(path, "wait_for_signals"), j)
            predicates = {
                f: (pred.op, self.value(pred.value, at(at(w_path, "match"), f), wait_scope))
                for f, pred in wait.match.items()
            }
            waits_compiled.append((wait.name, predicates))
        publish_steps = upstream.including(step.id)
        publish_scope = self.scope(owner, context, publish_steps, signals=waits, params=own_params)
        publishes = []
        for j, publish in enumerate(step.publish_signals):
            p_path = at(at(at(path, "publish_signals"), j), "params")
            publishes.append(
                (
                    publish.name,
                    {k: self.value(v, at(p_path, k), publish_scope) for k, v in publish.params.items()},
                )
            )
        cs = _CompiledStep(step, path, params, config, waits_compiled, publishes)
        if isinstance(step, ForeachStep):
            self.compile_foreach(cs, step, path, context, upstream, waits)
        elif isinstance(step, LoopStep):
            self.compile_loop(cs, step, path, context, upstream, waits)
        return cs

    def compile_config(self, step: Step, path: str, scope: Scope) -> dict[str, ValueNode]:
        if isinstance(step, SleepStep):
            return {"duration": self.value(step.duration, at(path, "duration"), scope)}
        if isinstance(step, ShellStep):
            command_path = at(path, "command")
            command = compile_shell_command(step.command, command_path, self.issues)
            for expr_path, expression in command.expressions():
                check_references(expression.references, expr_path, scope, self.issues)
            config: dict[str, ValueNode] = {
                "command": command,
                "env": self.value_map(step.env, at(path, "env"), scope),
            }
            if step.artifacts:
                config["artifacts"] = ConstNode(list(step.artifacts))
            return config
        if isinstance(step, PythonStep):
            return {"function": ConstNode(step.function)}
        if isinstance(step, HttpStep):
            return {
                "url": self.value(step.url, at(path, "url"), scope),
                "method": ConstNode(step.method),
                "headers": self.value_map(step.headers, at(path, "headers"), scope),
                "body": self.value(step.body, at(path, "body"), scope),
                "success_status": ConstNode(list(step.success_status)),
            }
        if isinstance(step, SqlStep):
            # The SQL text is constant: values reach the database only as bound parameters.
            statements: list[ValueNode] = [
                MapNode(
                    {
                        "sql": ConstNode(s.sql),
                        "args": self.value(s.args, at(at(at(path, "statements"), i), "args"), scope),
                    }
                )
                for i, s in enumerate(step.statements)
            ]
            return {
                "connection": ConstNode(step.connection),
                "statements": ListNode(statements),
                "transaction": ConstNode(step.transaction),
                "result": ConstNode(step.result),
                "max_rows": ConstNode(step.max_rows),
            }
        if isinstance(step, NotebookStep):
            return {"notebook": ConstNode(step.notebook), "kernel": ConstNode(step.kernel)}
        if isinstance(step, ContainerStep):
            # The image, mounts and pull policy are constant: a param cannot choose what runs or what
            # of the executor's disk a container sees; the command and env are templates.
            container: dict[str, ValueNode] = {
                "image": ConstNode(step.image),
                "command": ListNode(
                    [self.value(a, at(at(path, "command"), i), scope) for i, a in enumerate(step.command)]
                ),
                "env": self.value_map(step.env, at(path, "env"), scope),
                "mounts": ConstNode([msgspec.to_builtins(mount) for mount in step.mounts]),
                "pull": ConstNode(step.pull),
            }
            if step.workdir is not None:
                container["workdir"] = ConstNode(step.workdir)
            if step.artifacts:
                container["artifacts"] = ConstNode(list(step.artifacts))
            return container
        if isinstance(step, PluginStep):
            return {k: self.value(v, at(path, k), scope) for k, v in step.config.items()}
        if isinstance(step, SubworkflowStep):
            return self.subworkflow(step.subworkflow, at(path, "subworkflow"), scope)
        if isinstance(step, ForeachStep):
            spec = step.foreach
            return {
                "as": ConstNode(spec.as_),
                "concurrency": ConstNode(spec.concurrency),
                "on_failure": ConstNode(spec.on_failure),
            }
        if isinstance(step, LoopStep):
            return {"max_iterations": ConstNode(step.loop.max_iterations)}
        return {}

    def subworkflow(self, ref: SubworkflowRef, path: str, scope: Scope) -> dict[str, ValueNode]:
        if ref.workflow == self.defn.id:
            self.issues.append(
                DefinitionIssue(at(path, "workflow"), "a workflow cannot run itself as a subworkflow")
            )
        return {
            "workflow": ConstNode(ref.workflow),
            "version": ConstNode(ref.version),
            "params": self.value_map(ref.params, at(path, "params"), scope),
            "apply_run_strategy": ConstNode(ref.apply_run_strategy),
        }

    def compile_foreach(
        self,
        cs: _CompiledStep,
        step: ForeachStep,
        path: str,
        context: _BodyContext,
        upstream: _Visible,
        waits: frozenset[str],
    ) -> None:
        spec = step.foreach
        fpath = at(path, "foreach")
        cs.over = self.condition(
            spec.over, at(fpath, "over"), self.scope(f"step {step.id!r}", context, upstream, signals=waits)
        )
        if spec.as_ in context.params:
            what = (
                "an enclosing foreach's variable"
                if spec.as_ in context.foreach_vars
                else "the workflow param"
            )
            self.issues.append(
                DefinitionIssue(at(fpath, "as"), f"{spec.as_!r} shadows {what} params.{spec.as_}")
            )
        if "index" in self.defn.params:
            self.issues.append(
                DefinitionIssue(
                    fpath, "the workflow param params.index is hidden by the iteration index in this body"
                )
            )
        added = frozenset({spec.as_, "index"})
        inner = _BodyContext(
            params=context.params | added,
            outer=upstream,
            iteration=context.iteration,
            foreach_vars=context.foreach_vars | added,
        )
        if spec.steps is not None:
            cs.body = self.compile_body(spec.steps, at(fpath, "steps"), inner, None)
        elif spec.subworkflow is not None:
            scope = self.scope(f"step {step.id!r}", inner, upstream, signals=waits)
            cs.foreach_ref = self.subworkflow(spec.subworkflow, at(fpath, "subworkflow"), scope)

    def compile_loop(
        self,
        cs: _CompiledStep,
        step: LoopStep,
        path: str,
        context: _BodyContext,
        upstream: _Visible,
        waits: frozenset[str],
    ) -> None:
        lpath = at(path, "loop")
        body_ids = frozenset(s.id for s in step.loop.steps)
        scope = self.scope(f"step {step.id!r}", context, upstream, signals=waits, iteration=body_ids)
        cs.condition = self.condition(step.loop.while_, at(lpath, "while"), scope)
        inner = _BodyContext(
            params=context.params, outer=upstream, iteration=body_ids, foreach_vars=context.foreach_vars
        )
        cs.body = self.compile_body(step.loop.steps, at(lpath, "steps"), inner, None)


def _link_root(graph: CompiledWorkflow, root: CompiledWorkflow) -> None:
    """Bodies answer run-level questions (params, triggers) through the top-level workflow."""
    graph._root = root
    for cs in graph._steps.values():
        if cs.body is not None:
            _link_root(cs.body, root)


def _typed(raw: Any, spec: ParamSpec, path: str, issues: list[DefinitionIssue]) -> Any:
    if raw is None:
        return None
    try:
        return coerce(raw, spec.type)
    except ValueError as exc:
        issues.append(DefinitionIssue(path, str(exc)))
        return None


def analyze_definition(definition: WorkflowDefinition) -> tuple[CompiledWorkflow, list[DefinitionIssue]]:
    """Check a definition as a whole (graph, expressions, references); returns what compiled and the issues."""
    builder = _Builder(definition)
    compiled = builder.build()
    return compiled, builder.issues


def compile_workflow(definition: WorkflowDefinition) -> CompiledWorkflow:
    """Compile a definition (built once per version, then cached); raises :class:`DefinitionError`."""
    compiled, issues = analyze_definition(definition)
    if issues:
        raise DefinitionError(issues)
    return compiled


__all__ = [
    "CompiledWorkflow",
    "Edge",
    "EvalEnv",
    "InstanceInfo",
    "PublishedSignal",
    "ResolvedSignalWait",
    "ResolvedStep",
    "analyze_definition",
    "compile_workflow",
]
