"""foreach, loop and subworkflow steps: child runs, created lazily and joined back into their parent.

- **foreach**: ``over`` is evaluated once when the step starts (with the run's start time as ``now()``,
  so re-evaluating it after a scheduler restart gives the same items); iterations are child runs of
  the step's body (or of a subworkflow), created ``concurrency`` at a time as earlier ones end — a
  100,000-item foreach holds at most ``concurrency`` iterations in memory and in flight, and has written
  rows only for the iterations it started. When the last one ends, the iterations' outputs are collected
  from Postgres into ``outputs.iterations`` (item order). ``on_failure``: ``fail`` stops the others at
  once, ``finish_others_then_fail`` runs every remaining iteration and then fails, ``ignore`` succeeds.
  A restart re-runs only the failed iterations.
- **loop**: the body runs as child runs one after the other while ``while`` holds (checked before each
  iteration, seeing ``iteration.index`` and the previous iteration's ``iteration.outputs``), at most
  ``max_iterations`` times; ``outputs`` = ``{iterations, last}``.
- **subworkflow**: a child run of another workflow (pinned version or the active one), which does not
  queue under the child workflow's run strategy unless ``apply_run_strategy: true``; its outputs become
  the step's outputs. Stopping or killing the parent stops its children.

Inline children (foreach/loop bodies) belong to the same workflow and so to the same actor: they are
joined in memory. Children of other workflows report back with a ``ChildFinished`` message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from legato.bus.publisher import OutgoingMessage
from legato.core import ParamError, to_json_value
from legato.protocol import encode
from legato.protocol.ids import instance_id_for
from legato.protocol.messages import ActionRequest, ChildFinished, ParentRef, StartRun, TriggerInfo
from legato.scheduler import run_spans
from legato.scheduler.state import InstanceState, StepState, now_utc
from legato.sel import SelError
from legato.telemetry.tracing import inject_headers

if TYPE_CHECKING:
    from legato.scheduler.engine import RunEngine

MAX_DEPTH = 10  # nesting of child runs (a workflow that calls itself must end somewhere)
FAILED_ITEMS_SHOWN = 100


def _json_params(values: dict[str, Any]) -> dict[str, Any]:
    return {k: to_json_value(v) for k, v in values.items()}


def depth_of(inst: InstanceState) -> int:
    depth = inst.trigger.get("depth", 0)
    return depth if isinstance(depth, int) else 0


# ---------------------------------------------------------------------------------------- starting


def start_step(engine: RunEngine, inst: InstanceState, st: StepState) -> None:
    graph = engine.graph(inst)
    step = graph.step(st.step_id)
    if depth_of(inst) >= MAX_DEPTH:
        engine.fail_step_without_attempt(inst, st.step_id, f"nesting deeper than {MAX_DEPTH} child runs")
        return
    env = engine.env(inst)
    try:
        resolved = graph.resolve_step(st.step_id, env)
    except (ParamError, SelError) as exc:
        engine.fail_step_without_attempt(inst, st.step_id, f"params: {exc}")
        return
    st.status = "running"
    st.started_at = st.started_at or now_utc()
    st.params = _json_params(resolved.params)
    st.reason = None
    st.error = None
    engine.uow.touch_step(st)
    if step.type == "foreach":
        start_foreach(engine, inst, st, resolved.config)
    elif step.type == "loop":
        st.progress = {"kind": "loop", "index": 0, "max": resolved.config["max_iterations"], "last": {}}
        next_loop_iteration(engine, inst, st)
    elif step.type == "subworkflow":
        start_subworkflow(engine, inst, st, resolved.config)
    else:
        engine.fail_step_without_attempt(inst, st.step_id, f"unknown step type {step.type!r}")


def _items(engine: RunEngine, inst: InstanceState, step_id: str) -> Any:
    """The foreach items, evaluated once per activation with the run's start time as ``now()``."""
    key = (inst.id, step_id)
    items = engine.items_cache.get(key)
    if items is None:
        env = engine.env(inst)
        env.now = inst.started_at or inst.created_at
        items = engine.graph(inst).foreach_items(step_id, env)
        engine.items_cache[key] = items
    return items


def start_foreach(engine: RunEngine, inst: InstanceState, st: StepState, config: dict[str, Any]) -> None:
    try:
        items = _items(engine, inst, st.step_id)
    except (ParamError, SelError, ValueError) as exc:
        engine.fail_step_without_attempt(inst, st.step_id, f"foreach.over: {exc}")
        return
    prog = st.progress
    if (
        prog
        and prog.get("kind") == "foreach"
        and prog.get("failed_items")
        and prog.get("total") == len(items)
    ):
        # Restart of a failed foreach: run only its failed iterations again.
        prog["retry"] = sorted(prog["failed_items"])
        prog["failed"] = 0
        prog["failed_items"] = []
        prog["run"] = prog.get("run", 1) + 1
        prog["stopping"] = False
        engine.note(
            inst,
            "foreach_restarted",
            f"step {st.step_id}: re-running {len(prog['retry'])} failed iterations",
            step_id=st.step_id,
        )
    else:
        prog = {
            "kind": "foreach",
            "total": len(items),
            "next": 0,
            "running": 0,
            "succeeded": 0,
            "failed": 0,
            "ignored": 0,
            "concurrency": int(config.get("concurrency") or 20),
            "on_failure": config.get("on_failure") or "finish_others_then_fail",
            "as": config.get("as") or "item",
            "retry": [],
            "failed_items": [],
            "children": {},
            "run": 1,
        }
        engine.note(
            inst,
            "foreach_started",
            f"step {st.step_id}: {len(items)} iterations, concurrency {prog['concurrency']}",
            step_id=st.step_id,
        )
    st.progress = prog
    engine.uow.touch_step(st)
    fill_foreach(engine, inst, st)


def fill_foreach(engine: RunEngine, inst: InstanceState, st: StepState) -> None:
    """Start iterations up to the step's concurrency; finish the step when nothing is left."""
    prog = st.progress
    assert prog is not None
    while not prog.get("stopping") and prog["running"] < prog["concurrency"]:
        if prog["retry"]:
            index = prog["retry"].pop(0)
        elif prog["next"] < prog["total"]:
            index = prog["next"]
            prog["next"] += 1
        else:
            break
        prog["running"] += 1
        start_iteration(engine, inst, st, index)
        if st.status != "running":
            return
    engine.uow.touch_step(st)
    if prog["running"] == 0 and (
        prog.get("stopping") or (not prog["retry"] and prog["next"] >= prog["total"])
    ):
        engine.uow.collect.append((inst.id, st.step_id))


def _child_key(inst: InstanceState, st: StepState, index: int | None, kind: str) -> str:
    prog = st.progress or {}
    run = prog.get("run", 1)
    suffix = "" if index is None else f":{index}"
    return f"{kind}:{inst.id}:{st.step_id}{suffix}:r{inst.run_number}.{run}"


def start_iteration(engine: RunEngine, inst: InstanceState, st: StepState, index: int) -> None:
    graph = engine.graph(inst)
    step = graph.step(st.step_id)
    prog = st.progress
    assert prog is not None
    item = _items(engine, inst, st.step_id)[index]
    key = _child_key(inst, st, index, "foreach")
    foreach = step.foreach  # type: ignore[union-attr]
    if foreach.subworkflow is not None:
        env = graph.foreach_env(st.step_id, engine.env(inst), index, item)
        try:
            target = graph.foreach_subworkflow(st.step_id, env)
        except (ParamError, SelError) as exc:
            iteration_ended(engine, inst, st.step_id, index, "failed", {}, f"subworkflow params: {exc}")
            return
        child_id = start_child_run(engine, inst, st, target, key, index)
        prog["children"][str(index)] = [target["workflow"], child_id]
        return
    typed = {**engine.typed_params(inst), prog["as"]: item, "index": index}
    child = _inline_child(engine, inst, st, key, index, typed, {"index": index})
    engine.start(child)


def _inline_child(
    engine: RunEngine,
    inst: InstanceState,
    st: StepState,
    key: str,
    index: int,
    typed: dict[str, Any],
    trigger_extra: dict[str, Any],
) -> InstanceState:
    body = f"{inst.body_path}/{st.step_id}" if inst.body_path else st.step_id
    child = InstanceState(
        id=instance_id_for(inst.workflow_id, key),
        workflow_id=inst.workflow_id,
        version=inst.version,
        trigger_key=key,
        trigger={
            "kind": engine.graph(inst).step(st.step_id).type,
            "parent": inst.id,
            "step": st.step_id,
            "depth": depth_of(inst) + 1,
            **trigger_extra,
        },
        status="created",
        params=_json_params(typed),
        run_params={},
        created_at=now_utc(),
        parent_instance_id=inst.id,
        parent_step_id=st.step_id,
        parent_iteration=index,
        root_instance_id=inst.root_instance_id or inst.id,
        body_path=body,
        under_strategy=False,
        new=True,
    )
    child.typed_params = typed
    run_spans.open_child(child, inst)
    engine.uow.touch_instance(child)
    return child


def child_typed_params(engine: RunEngine, child: InstanceState) -> dict[str, Any]:
    """Typed params of an inline child after a reload: the parent's, plus its item and index."""
    parent = engine.state.instances.get(child.parent_instance_id or "")
    if parent is None:
        return dict(child.params)
    typed = dict(engine.typed_params(parent))
    st = parent.steps.get(child.parent_step_id or "")
    prog = st.progress if st is not None else None
    if prog and prog.get("kind") == "foreach" and child.parent_iteration is not None:
        typed[prog["as"]] = _items(engine, parent, st.step_id)[child.parent_iteration]  # type: ignore[union-attr]
        typed["index"] = child.parent_iteration
    return typed


def iteration_env(engine: RunEngine, child: InstanceState) -> tuple[Mapping[str, Any], dict[str, Any] | None]:
    """What an inline child sees of its parent: the enclosing steps, and ``iteration`` in a loop body."""
    parent = engine.state.instances.get(child.parent_instance_id or "")
    if parent is None:
        return {}, None
    outer = engine.env(parent).steps
    st = parent.steps.get(child.parent_step_id or "")
    prog = st.progress if st is not None else None
    if prog and prog.get("kind") == "loop":
        return outer, {"index": child.parent_iteration or 0, "outputs": prog.get("last", {})}
    return outer, None


# ---------------------------------------------------------------------------------------- loops


def next_loop_iteration(engine: RunEngine, inst: InstanceState, st: StepState) -> None:
    graph = engine.graph(inst)
    prog = st.progress
    assert prog is not None
    env = graph.loop_env(st.step_id, engine.env(inst), prog["index"], prog.get("last", {}))
    try:
        go_on = graph.loop_should_continue(st.step_id, env)
    except (SelError, ValueError) as exc:
        engine.fail_step_without_attempt(inst, st.step_id, f"loop.while: {exc}")
        return
    if not go_on:
        st.outputs = {"iterations": prog["index"], "last": prog.get("last", {})}
        st.status = "succeeded"
        st.ended_at = now_utc()
        engine.uow.touch_step(st)
        engine.note(
            inst,
            "step_succeeded",
            f"step {st.step_id}: loop ended after {prog['index']} iterations",
            step_id=st.step_id,
        )
        engine.advance(inst)
        return
    index = prog["index"]
    key = _child_key(inst, st, index, "loop")
    child = _inline_child(engine, inst, st, key, index, dict(engine.typed_params(inst)), {"iteration": index})
    engine.uow.touch_step(st)
    engine.start(child)


# ---------------------------------------------------------------------------------------- subworkflows


def start_subworkflow(engine: RunEngine, inst: InstanceState, st: StepState, config: dict[str, Any]) -> None:
    key = _child_key(inst, st, None, "subworkflow")
    child_id = start_child_run(engine, inst, st, config, key, None)
    st.progress = {"kind": "subworkflow", "workflow": config["workflow"], "child": child_id}
    engine.uow.touch_step(st)


def start_child_run(
    engine: RunEngine,
    inst: InstanceState,
    st: StepState,
    target: dict[str, Any],
    key: str,
    index: int | None,
) -> str:
    """A child run of a workflow (maybe this one), through that workflow's actor."""
    workflow = str(target["workflow"])
    version = target.get("version")
    child_id = instance_id_for(workflow, key)
    msg = StartRun(
        workflow_id=workflow,
        trigger_key=key,
        instance_id=child_id,
        trigger=TriggerInfo(
            kind="subworkflow" if index is None else "foreach",
            id=st.step_id,
            details={
                "parent": inst.id,
                "parent_workflow": inst.workflow_id,
                "step": st.step_id,
                "depth": depth_of(inst) + 1,
                **({} if index is None else {"index": index}),
            },
        ),
        params=_json_params(dict(target.get("params") or {})),
        version=version if isinstance(version, int) else None,
        parent=ParentRef(
            instance_id=inst.id, workflow_id=inst.workflow_id, step_id=st.step_id, iteration=index
        ),
        apply_run_strategy=bool(target.get("apply_run_strategy", False)),
    )
    engine.uow.outbox.append(
        OutgoingMessage(
            engine.topology.trigger_subject(workflow),
            encode(msg),
            msg_id=f"start:{child_id}",
            headers=inject_headers({}),
        )
    )
    engine.note(
        inst,
        "child_started",
        f"step {st.step_id}: child run {child_id} of {workflow}",
        step_id=st.step_id,
        details={"child": child_id, "workflow": workflow, "index": index},
    )
    return child_id


# ---------------------------------------------------------------------------------------- joining


def child_ended(engine: RunEngine, child: InstanceState) -> None:
    """A child run ended: tell its parent (in memory when inline, else by message)."""
    outputs = child.outputs or {
        sid: s.outputs or {} for sid, s in child.steps.items() if s.status == "succeeded"
    }
    if child.body_path:
        parent = engine.state.instances.get(child.parent_instance_id or "")
        if parent is not None:
            on_child(
                engine,
                parent,
                child.parent_step_id or "",
                child.parent_iteration,
                child.status,
                outputs,
                child.error,
            )
        return
    parent_wf = child.trigger.get("parent_workflow")
    if not isinstance(parent_wf, str):
        return
    done = ChildFinished(
        workflow_id=parent_wf,
        parent_instance_id=child.parent_instance_id or "",
        parent_step_id=child.parent_step_id or "",
        iteration=child.parent_iteration,
        child_instance_id=child.id,
        child_workflow_id=child.workflow_id,
        status=child.status,
        outputs=outputs,
        error=child.error,
    )
    engine.uow.outbox.append(
        OutgoingMessage(
            engine.topology.trigger_subject(parent_wf),
            encode(done),
            msg_id=f"childdone:{child.id}:{child.run_number}",
            headers=inject_headers({}),
        )
    )


def on_child_finished(engine: RunEngine, msg: ChildFinished) -> None:
    parent = engine.state.instances.get(msg.parent_instance_id)
    if parent is None:
        return
    on_child(
        engine,
        parent,
        msg.parent_step_id,
        msg.iteration,
        msg.status,
        msg.outputs,
        msg.error,
        child_id=msg.child_instance_id,
    )


def on_child(
    engine: RunEngine,
    parent: InstanceState,
    step_id: str,
    index: int | None,
    status: str,
    outputs: dict[str, Any],
    error: str | None,
    *,
    child_id: str | None = None,
) -> None:
    st = parent.steps.get(step_id)
    if parent.status != "running" or st is None or st.status != "running" or not st.progress:
        return  # the parent or its step ended meanwhile (e.g. stopped): nothing to join
    kind = st.progress.get("kind")
    if kind == "foreach" and index is not None:
        if child_id is not None and st.progress["children"].get(str(index), [None, None])[1] != child_id:
            return  # an older child of this iteration (before a restart)
        iteration_ended(engine, parent, step_id, index, status, outputs, error)
    elif kind == "loop":
        if status != "succeeded":
            _fail_dynamic(engine, parent, st, f"loop iteration {index} {status}: {error or ''}".rstrip(": "))
            return
        st.progress["last"] = outputs
        st.progress["index"] = (index or 0) + 1
        next_loop_iteration(engine, parent, st)
    elif kind == "subworkflow":
        if child_id is not None and st.progress.get("child") != child_id:
            return
        if status == "succeeded":
            st.outputs = {**outputs, "instance_id": st.progress.get("child")}
            st.status = "succeeded"
            st.ended_at = now_utc()
            engine.uow.touch_step(st)
            engine.note(
                parent, "step_succeeded", f"step {step_id}: child run {child_id} succeeded", step_id=step_id
            )
            if engine.publish_signals(parent, st, f"{parent.id}-{step_id}-{parent.run_number}"):
                engine.advance(parent)
        else:
            _fail_dynamic(engine, parent, st, f"child run {child_id} {status}: {error or ''}".rstrip(": "))


def iteration_ended(
    engine: RunEngine,
    parent: InstanceState,
    step_id: str,
    index: int,
    status: str,
    outputs: dict[str, Any],
    error: str | None,
) -> None:
    st = parent.steps[step_id]
    prog = st.progress
    assert prog is not None
    prog["running"] = max(0, prog["running"] - 1)
    prog["children"].pop(str(index), None)
    if status == "succeeded":
        prog["succeeded"] += 1
    elif prog["on_failure"] == "ignore":
        prog["ignored"] += 1
        prog["failed_items"].append(index)
    else:
        prog["failed"] += 1
        prog["failed_items"].append(index)
        if len(prog["failed_items"]) <= FAILED_ITEMS_SHOWN:
            engine.note(
                parent,
                "iteration_failed",
                f"step {step_id}: iteration {index} {status}: {error or ''}",
                step_id=step_id,
                details={"index": index},
            )
        if prog["on_failure"] == "fail" and not prog.get("stopping"):
            prog["stopping"] = True
            stop_children(engine, parent, st, f"iteration {index} failed (on_failure: fail)")
    engine.uow.touch_step(st)
    fill_foreach(engine, parent, st)


def complete_foreach(engine: RunEngine, parent: InstanceState, step_id: str, results: list[Any]) -> None:
    """All iterations ended and their outputs are collected (item order): the step ends."""
    st = parent.steps.get(step_id)
    if st is None or st.status != "running" or not st.progress:
        return
    prog = st.progress
    st.outputs = {
        "iterations": results,
        "count": prog["total"],
        "succeeded": prog["succeeded"],
        "failed": prog["failed"] + prog["ignored"],
    }
    engine.uow.touch_step(st)
    if prog["failed"]:
        _fail_dynamic(
            engine,
            parent,
            st,
            f"{prog['failed']} of {prog['total']} iterations failed "
            f"(first: {sorted(prog['failed_items'])[:10]})",
        )
        return
    st.status = "succeeded"
    st.ended_at = now_utc()
    engine.note(
        parent,
        "step_succeeded",
        f"step {step_id}: {prog['succeeded']} iterations succeeded"
        + (f", {prog['ignored']} failed and ignored" if prog["ignored"] else ""),
        step_id=step_id,
    )
    if engine.publish_signals(parent, st, f"{parent.id}-{step_id}-{parent.run_number}"):
        engine.advance(parent)


def _fail_dynamic(engine: RunEngine, inst: InstanceState, st: StepState, error: str) -> None:
    if st.progress and st.progress.get("kind") in ("loop", "subworkflow", "foreach"):
        stop_children(engine, inst, st, error)
    st.status = "failed"
    st.error = error
    st.ended_at = now_utc()
    engine.uow.touch_step(st)
    engine.note(inst, "step_failed", f"step {st.step_id} failed: {error}", step_id=st.step_id)
    engine.after_step_failure(inst, st)


def stop_children(engine: RunEngine, inst: InstanceState, st: StepState, why: str) -> None:
    """Stop the step's live child runs: inline ones here, others through their workflows' actors."""
    for child in [
        c
        for c in engine.state.instances.values()
        if c.parent_instance_id == inst.id and c.parent_step_id == st.step_id and not c.terminal
    ]:
        engine.finish(
            child, "stopped", reason={"code": "parent_stopped", "why": why}, error=f"stopped: {why}"
        )
    prog = st.progress or {}
    remote: list[tuple[str, str]] = []
    if prog.get("kind") == "subworkflow" and prog.get("child"):
        remote.append((prog["workflow"], prog["child"]))
    for wf_child in (prog.get("children") or {}).values():
        remote.append((wf_child[0], wf_child[1]))
    for workflow, child_id in remote:
        engine.uow.outbox.append(
            OutgoingMessage(
                engine.topology.trigger_subject(workflow),
                encode(
                    ActionRequest(
                        action_id=f"parent-stop:{child_id}",
                        workflow_id=workflow,
                        action="stop",
                        instance_id=child_id,
                        reason=why,
                        actor="legato (parent run ended)",
                    )
                ),
                msg_id=f"parent-stop:{child_id}",
            )
        )
