"""The child runs of child steps: an inline iteration's state, and the messages to and about the child
runs of other workflows (start, stop, ended). Pure builders; the engine records and sends them."""

from __future__ import annotations

from typing import Any

from legato.core.progress import ForeachProgress, Progress, SubworkflowProgress
from legato.protocol.ids import instance_id_for
from legato.protocol.messages import ActionRequest, ChildFinished
from legato.scheduler.child_steps.context import depth_of, json_params
from legato.scheduler.child_steps.outcome import StartInline
from legato.scheduler.state import InstanceState, now_utc


def inline_child(parent: InstanceState, step_id: str, step_type: str, start: StartInline) -> InstanceState:
    """A new child run of the step's body (a foreach or loop iteration), not yet started."""
    body = f"{parent.body_path}/{step_id}" if parent.body_path else step_id
    child = InstanceState(
        id=instance_id_for(parent.workflow_id, start.key),
        workflow_id=parent.workflow_id,
        version=parent.version,
        trigger_key=start.key,
        trigger={
            "kind": step_type,
            "parent": parent.id,
            "step": step_id,
            "depth": depth_of(parent.trigger) + 1,
            **start.trigger_extra,
        },
        status="created",
        params=json_params(start.typed_params),
        run_params={},
        created_at=now_utc(),
        parent_instance_id=parent.id,
        parent_step_id=step_id,
        parent_iteration=start.index,
        root_instance_id=parent.root_instance_id or parent.id,
        body_path=body,
        under_strategy=False,
        new=True,
    )
    child.typed_params = start.typed_params
    return child


def remote_children(progress: Progress | None) -> list[tuple[str, str]]:
    """(workflow, run id) of the step's child runs in other actors: its subworkflow, or its foreach
    iterations over a subworkflow that still run."""
    match progress:
        case SubworkflowProgress(workflow=workflow, child=child) if child:
            return [(workflow, child)]
        case ForeachProgress(children=children):
            return [(wf_child[0], wf_child[1]) for wf_child in children.values()]
        case _:
            return []


def stop_request(workflow: str, child_id: str, why: str) -> ActionRequest:
    """Stop a child run of another workflow because its parent's step ended."""
    return ActionRequest(
        action_id=f"parent-stop:{child_id}",
        workflow_id=workflow,
        action="stop",
        instance_id=child_id,
        reason=why,
        actor="legato (parent run ended)",
    )


def child_outputs(child: InstanceState) -> dict[str, Any]:
    """What an ended child run hands its parent: its outputs, else its succeeded steps' outputs."""
    return child.outputs or {
        sid: s.outputs or {} for sid, s in child.steps.items() if s.status == "succeeded"
    }


def child_finished(child: InstanceState, parent_workflow: str) -> ChildFinished:
    """The message that tells a parent in another actor that its child run ended."""
    return ChildFinished(
        workflow_id=parent_workflow,
        parent_instance_id=child.parent_instance_id or "",
        parent_step_id=child.parent_step_id or "",
        iteration=child.parent_iteration,
        child_instance_id=child.id,
        child_workflow_id=child.workflow_id,
        status=child.status,
        outputs=child_outputs(child),
        error=child.error,
    )
