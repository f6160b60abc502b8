"""``legato workflow validate`` and ``legato workflow plan``: checks and a dry run, no servers needed.

A plan resolves the run params, then walks the step graph and evaluates everything that depends
on params alone: step params and commands, which conditional branches are taken, how many
iterations a foreach runs, subworkflow targets, retries and timeouts. What depends on step
outputs or signals is shown as *decided at run time*. A step with several predecessors runs when
at least one incoming edge is taken (the scheduler's rule).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from legato.core.compiled import CompiledWorkflow, Edge, EvalEnv, InstanceInfo, compile_workflow
from legato.core.definitions import parse_definition
from legato.core.durations import format_duration
from legato.core.errors import DefinitionError, DefinitionIssue, ParamError
from legato.core.expressions import ValueNode
from legato.core.model import CronTrigger, ForeachStep, LoopStep, SignalTrigger, WorkflowDefinition
from legato.core.values import to_json_value
from legato.sel import Expression, SelError

RUNS = "runs"
SKIPPED = "skipped"
RUNTIME = "decided at run time"
UNKNOWN = "unknown (params did not resolve)"
_ITEMS_SHOWN = 3
_FIRES_SHOWN = 3


def validate_text(data: str | bytes, source: str = "<definition>") -> list[DefinitionIssue]:
    """Every issue in a YAML or JSON definition; an empty list means it is valid."""
    try:
        parse_definition(data, source=source)
    except DefinitionError as exc:
        return exc.errors
    return []


class Plan:
    """The evaluated step graph of one would-be run; ``to_text()`` for people, ``to_json()`` for tools."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    @property
    def ok(self) -> bool:
        """False when the run params did not resolve (a real run would fail at start)."""
        return not self._data["param_errors"]

    def to_json(self) -> dict[str, Any]:
        """The plan as JSON-able data (stable field names; see ``docs`` in the module)."""
        return self._data

    def to_text(self) -> str:
        """The plan as readable text."""
        return _render(self._data)


def plan_workflow(
    defn: WorkflowDefinition, params: Mapping[str, str], *, now: datetime | None = None
) -> Plan:
    """Dry-run ``defn`` with run ``params`` (CLI ``k=v`` text or typed values); ``now`` fixes the clock."""
    clock = now or datetime.now(UTC)
    if clock.tzinfo is None:
        clock = clock.replace(tzinfo=UTC)
    compiled = compile_workflow(defn)
    instance = InstanceInfo(
        id="plan", workflow_id=defn.id, version=0, start_time=clock, trigger={"kind": "plan", "id": "plan"}
    )
    param_errors: list[DefinitionIssue] = []
    resolved: dict[str, Any] | None
    try:
        resolved = compiled.resolve_run_params(params, instance=instance)
    except ParamError as exc:
        param_errors = exc.errors
        resolved = None
    planner = _Planner(compiled, resolved, instance, clock)
    data = {
        "workflow": _workflow_summary(defn),
        "now": clock.isoformat(),
        "params": _params_summary(defn, params, resolved),
        "param_errors": [{"path": i.path, "message": i.message} for i in param_errors],
        "triggers": _triggers_summary(compiled, clock),
        "steps": planner.graph(compiled, frozenset()),
    }
    return Plan(data)


# ---------------------------------------------------------------------------- summaries


def _duration(seconds: float | None) -> str | None:
    return None if seconds is None else format_duration(seconds)


def _workflow_summary(defn: WorkflowDefinition) -> dict[str, Any]:
    return {
        "id": defn.id,
        "description": defn.description,
        "owner": defn.owner,
        "tags": list(defn.tags),
        "criticality": defn.criticality,
        "run_strategy": {
            "type": defn.run_strategy.type,
            "max_concurrency": defn.run_strategy.max_concurrency,
        },
        "step_concurrency": defn.step_concurrency,
        "timeout": defn.timeout,
        "timeout_text": _duration(defn.timeout),
    }


def _params_summary(
    defn: WorkflowDefinition, supplied: Mapping[str, Any], resolved: dict[str, Any] | None
) -> list[dict[str, Any]]:
    out = []
    for name, spec in defn.params.items():
        if supplied.get(name) is not None:
            source = "supplied"
        elif spec.expr is not None:
            source = "expr"
        elif spec.default is not None:
            source = "default"
        else:
            source = "required" if spec.required else "unset"
        entry: dict[str, Any] = {"name": name, "type": spec.type, "source": source}
        if spec.expr is not None:
            entry["expr"] = spec.expr
        if resolved is not None and name in resolved:
            entry["value"] = to_json_value(resolved[name])
        out.append(entry)
    return out


def _triggers_summary(compiled: CompiledWorkflow, clock: datetime) -> list[dict[str, Any]]:
    out = []
    for trigger in compiled.definition.triggers:
        entry: dict[str, Any] = {"id": trigger.id, "type": trigger.type, "params": sorted(trigger.params)}
        if isinstance(trigger, CronTrigger):
            schedule = compiled.schedule(trigger.id)
            fires = []
            current = clock
            for _ in range(_FIRES_SHOWN):
                current = schedule.next_after(current)
                fires.append(current.isoformat())
            entry.update(cron=trigger.cron, timezone=trigger.timezone, next_fires=fires)
        elif isinstance(trigger, SignalTrigger):
            entry.update(
                signals=[leg.name for leg in trigger.signals],
                join=list(trigger.join),
                expiry=trigger.expiry,
                expiry_text=_duration(trigger.expiry),
            )
        out.append(entry)
    return out


# ---------------------------------------------------------------------------- the walk


class _Unknown(Exception):
    """The value depends on something a plan does not know (step outputs, signals, the item)."""


class _Planner:
    def __init__(
        self, root: CompiledWorkflow, params: dict[str, Any] | None, instance: InstanceInfo, clock: datetime
    ) -> None:
        self.root = root
        self.params = params
        self.instance = instance.namespace()
        self.clock = clock

    def evaluate(
        self, refs: frozenset[tuple[str, ...]], dynamic: frozenset[str], run: Any, params: dict[str, Any]
    ) -> Any:
        """Run ``run(env)`` when ``refs`` only need params (not ``dynamic`` ones) and the instance."""
        if self.params is None and any(r[0] == "params" for r in refs):
            raise _Unknown(UNKNOWN)
        for ref in refs:
            if ref[0] not in ("params", "instance") or (
                ref[0] == "params" and len(ref) > 1 and ref[1] in dynamic
            ):
                raise _Unknown(RUNTIME)
        return run({"params": params, "instance": self.instance})

    def node(self, node: ValueNode, dynamic: frozenset[str], params: dict[str, Any]) -> dict[str, Any]:
        try:
            value = self.evaluate(
                node.references, dynamic, lambda env: node.evaluate(env, now=self.clock), params
            )
        except _Unknown as why:
            return {"status": str(why), "expressions": [e.source for _, e in node.expressions()]}
        except SelError as exc:
            return {"status": "error", "error": exc.describe()}
        try:
            return {"value": to_json_value(value)}
        except ValueError as exc:
            return {"status": "error", "error": str(exc)}

    def condition(self, expr: Expression, dynamic: frozenset[str], params: dict[str, Any]) -> Any:
        """True/False when decidable from params alone, else a status string."""
        try:
            value = self.evaluate(
                expr.references, dynamic, lambda env: expr.evaluate(env, now=self.clock), params
            )
        except _Unknown as why:
            return str(why)
        except SelError as exc:
            return f"error: {exc.describe()}"
        if type(value) is not bool:
            return f"error: a condition must be true or false, got {type(value).__name__}"
        return value

    def graph(self, compiled: CompiledWorkflow, dynamic: frozenset[str]) -> list[dict[str, Any]]:
        base = dict(self.params or {})
        statuses: dict[str, str] = {}
        out = []
        for sid in compiled.topo_order:
            edges = [self.edge(e, statuses, dynamic, base) for e in compiled.predecessors(sid)]
            status, reason = self.status(edges)
            statuses[sid] = status
            out.append(self.step(compiled, sid, status, reason, edges, dynamic, base))
        return out

    def edge(
        self, edge: Edge, statuses: Mapping[str, str], dynamic: frozenset[str], params: dict[str, Any]
    ) -> dict[str, Any]:
        taken: Any = True
        if edge.when is not None:
            taken = self.condition(edge.when, dynamic, params)
        source = statuses.get(edge.source, RUNTIME)
        if source == SKIPPED:
            taken = False
        elif source != RUNS and taken is True:
            taken = source
        return {
            "from": edge.source,
            "when": edge.when.source if edge.when is not None else None,
            "taken": taken,
        }

    @staticmethod
    def status(edges: list[dict[str, Any]]) -> tuple[str, str]:
        if not edges:
            return RUNS, "a root step"
        if any(e["taken"] is True for e in edges):
            via = ", ".join(e["from"] for e in edges if e["taken"] is True)
            return RUNS, f"after {via}"
        if all(e["taken"] is False for e in edges):
            return SKIPPED, "no incoming edge is taken"
        if any(e["taken"] == UNKNOWN for e in edges):
            return UNKNOWN, "its conditions need params that did not resolve"
        return RUNTIME, "its conditions depend on step outputs"

    def step(
        self,
        compiled: CompiledWorkflow,
        sid: str,
        status: str,
        reason: str,
        edges: list[dict[str, Any]],
        dynamic: frozenset[str],
        base: dict[str, Any],
    ) -> dict[str, Any]:
        cs = compiled._steps[sid]
        step = cs.step
        params = {name: self.node(node, dynamic, base) for name, node in cs.params.items()}
        merged = {**base, **{k: _from_plan(v) for k, v in params.items() if "value" in v}}
        own_dynamic = dynamic | frozenset(k for k, v in params.items() if "value" not in v)
        entry: dict[str, Any] = {
            "id": sid,
            "type": step.type,
            "path": cs.path,
            "status": status,
            "reason": reason,
            "after": edges,
            "params": params,
            "config": {
                name: self.node(node, own_dynamic, merged)
                for name, node in cs.config.items()
                if not (
                    isinstance(step, (ForeachStep, LoopStep))
                    and name in ("as", "concurrency", "max_iterations", "on_failure")
                )
            },
            "retry": {
                "error": step.retry.error,
                "platform": step.retry.platform,
                "timeout": step.retry.timeout,
                "backoff": {
                    "type": step.retry.backoff.type,
                    "initial": step.retry.backoff.initial,
                    "max": step.retry.backoff.max,
                    "multiplier": step.retry.backoff.multiplier,
                },
            },
            "timeout": step.timeout,
            "timeout_text": _duration(step.timeout),
            "on_failure": step.on_failure,
            "queue": step.queue,
            "concurrency_tags": list(step.concurrency_tags),
            "wait_for_signals": [w.name for w in step.wait_for_signals],
            "publish_signals": [p.name for p in step.publish_signals],
            "outputs": list(step.outputs),
        }
        if isinstance(step, ForeachStep):
            entry["foreach"] = self.foreach(compiled, sid, step, dynamic, base)
        elif isinstance(step, LoopStep):
            entry["loop"] = {
                "while": step.loop.while_,
                "max_iterations": step.loop.max_iterations,
                "body": self.graph(compiled.body(sid), dynamic),
            }
        return entry

    def foreach(
        self,
        compiled: CompiledWorkflow,
        sid: str,
        step: ForeachStep,
        dynamic: frozenset[str],
        base: dict[str, Any],
    ) -> dict[str, Any]:
        spec = step.foreach
        cs = compiled._steps[sid]
        info: dict[str, Any] = {
            "over": spec.over,
            "as": spec.as_,
            "concurrency": spec.concurrency,
            "on_failure": spec.on_failure,
        }
        over = cs.over
        assert over is not None
        try:
            items = self.evaluate(
                over.references,
                dynamic,
                lambda env: compiled.foreach_items(
                    sid, EvalEnv(params=env["params"], instance=env["instance"], now=self.clock)
                ),
                base,
            )
            info["iterations"] = len(items)
            info["first_items"] = [to_json_value(items[i]) for i in range(min(len(items), _ITEMS_SHOWN))]
        except _Unknown as why:
            info["iterations"] = str(why)
        except SelError as exc:
            info["iterations"] = f"error: {exc.describe()}"
        inner = dynamic | {spec.as_, "index"}
        if spec.steps is not None:
            info["body"] = self.graph(compiled.body(sid), inner)
        elif cs.foreach_ref is not None:
            info["subworkflow"] = {
                name: self.node(node, inner, base) for name, node in cs.foreach_ref.items()
            }
        return info


def _from_plan(entry: dict[str, Any]) -> Any:
    return entry["value"]


# ---------------------------------------------------------------------------- text


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _node_text(entry: dict[str, Any]) -> str:
    if "value" in entry:
        return _value_text(entry["value"])
    if entry.get("status") == "error":
        return f"<error: {entry['error']}>"
    shown = "; ".join(entry.get("expressions", []))
    return f"<{entry['status']}: {shown}>" if shown else f"<{entry['status']}>"


def _render(data: dict[str, Any]) -> str:
    wf = data["workflow"]
    rs = wf["run_strategy"]
    strategy = rs["type"] + (
        f" (max {rs['max_concurrency']} runs at once)" if rs["type"] == "parallel" else ""
    )
    lines = [f"Plan for workflow {wf['id']} at {data['now']}"]
    facts = [f"run strategy {strategy}", f"criticality {wf['criticality']}"]
    if wf["step_concurrency"] is not None:
        facts.append(f"step concurrency {wf['step_concurrency']}")
    if wf["timeout_text"]:
        facts.append(f"timeout {wf['timeout_text']}")
    lines.append("  " + "; ".join(facts))
    if data["params"]:
        lines.append("Params:")
        width = max(len(p["name"]) for p in data["params"])
        for p in data["params"]:
            value = _value_text(p["value"]) if "value" in p else "-"
            how = f"computed: {p['expr']}" if p["source"] == "expr" else p["source"]
            lines.append(f"  {p['name']:<{width}}  {p['type']:<8}  {value}  ({how})")
    if data["param_errors"]:
        lines.append("Param errors (a run with these params would fail at start):")
        lines.extend(f"  {e['path']}: {e['message']}" for e in data["param_errors"])
    if data["triggers"]:
        lines.append("Triggers:")
        for t in data["triggers"]:
            if t["type"] == "cron":
                lines.append(
                    f"  {t['id']}: cron {t['cron']!r} in {t['timezone']}; next: {', '.join(t['next_fires'])}"
                )
            else:
                join = f" joined on {', '.join(t['join'])}" if t["join"] else ""
                lines.append(
                    f"  {t['id']}: signals {', '.join(t['signals'])}{join} (partial joins expire after {t['expiry_text']})"
                )
    lines.append("Steps (in order):")
    _render_steps(data["steps"], lines, "  ")
    return "\n".join(lines) + "\n"


def _render_steps(steps: list[dict[str, Any]], lines: list[str], indent: str) -> None:
    for s in steps:
        lines.append(f"{indent}{s['id']} [{s['type']}]: {s['status']} ({s['reason']})")
        more = indent + "    "
        for e in s["after"]:
            if e["when"] is not None:
                taken = {True: "taken", False: "not taken"}.get(e["taken"], e["taken"])
                lines.append(f"{more}when from {e['from']}: {e['when']}  -> {taken}")
        for name, entry in s["params"].items():
            lines.append(f"{more}param {name} = {_node_text(entry)}")
        for name, entry in s["config"].items():
            if "value" in entry and entry["value"] in ({}, [], None):
                continue
            text = _node_text(entry)
            if "\n" in text.strip():
                lines.append(f"{more}{name}:")
                lines.extend(f"{more}  | {line}" for line in text.rstrip("\n").split("\n"))
            else:
                lines.append(f"{more}{name}: {text.strip()}")
        if s["type"] == "sleep" and isinstance(s["config"].get("duration", {}).get("value"), (int, float)):
            lines[-1] = f"{more}duration: {format_duration(s['config']['duration']['value'])}"
        _render_policy(s, lines, more)
        if s["wait_for_signals"]:
            lines.append(f"{more}waits for signals: {', '.join(s['wait_for_signals'])}")
        if s["publish_signals"]:
            lines.append(f"{more}publishes: {', '.join(s['publish_signals'])}")
        if "foreach" in s:
            _render_foreach(s["foreach"], lines, more)
        if "loop" in s:
            loop = s["loop"]
            lines.append(
                f"{more}repeats while {loop['while']} (at most {loop['max_iterations']} iterations); body:"
            )
            _render_steps(loop["body"], lines, more + "  ")


def _render_policy(s: dict[str, Any], lines: list[str], more: str) -> None:
    timeout = f"timeout {s['timeout_text']}; " if s["timeout_text"] else ""
    if s["type"] in ("noop", "foreach", "loop"):
        if timeout or s["on_failure"] != "fail":
            lines.append(f"{more}{timeout}on failure: {s['on_failure']}")
        return
    r = s["retry"]
    b = r["backoff"]
    backoff = (
        f"fixed {format_duration(b['initial'])}"
        if b["type"] == "fixed"
        else f"exponential {format_duration(b['initial'])}..{format_duration(b['max'])} x{b['multiplier']:g}"
    )
    lines.append(
        f"{more}{timeout}retries: error {r['error']}, platform {r['platform']}, timeout {r['timeout']} "
        f"({backoff}); on failure: {s['on_failure']}; queue {s['queue']}"
    )


def _render_foreach(f: dict[str, Any], lines: list[str], more: str) -> None:
    count = f["iterations"]
    items = ", ".join(_value_text(i) for i in f.get("first_items", []))
    if isinstance(count, int):
        suffix = ", ..." if count > len(f.get("first_items", [])) else ""
        lines.append(
            f"{more}{count} iterations over {f['over']} ({items}{suffix}), {f['concurrency']} at a time"
        )
    else:
        lines.append(f"{more}iterations over {f['over']}: {count}; {f['concurrency']} at a time")
    if "body" in f:
        lines.append(f"{more}body (per iteration, params.{f['as']} and params.index set):")
        _render_steps(f["body"], lines, more + "  ")
    if "subworkflow" in f:
        sub = f["subworkflow"]
        lines.append(
            f"{more}each iteration runs workflow {_node_text(sub['workflow'])} version {_node_text(sub['version'])}"
        )
