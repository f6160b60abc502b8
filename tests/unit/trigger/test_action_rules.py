"""The table of operator actions: which run statuses each applies to, and the endpoints it makes."""

from typing import get_args

from legato.core.statuses import InstanceStatus
from legato.protocol.messages import ActionKind
from legato.trigger.action_api import INSTANCE_ACTIONS, WORKFLOW_ACTIONS, ActionApi, statuses_allowed


def test_restart_of_a_succeeded_run_needs_a_step() -> None:
    rule = INSTANCE_ACTIONS["restart"]
    assert InstanceStatus.SUCCEEDED not in (statuses_allowed(rule, with_step=False) or ())
    assert InstanceStatus.SUCCEEDED in (statuses_allowed(rule, with_step=True) or ())
    assert statuses_allowed(rule, with_step=False) == ("failed", "timed_out", "stopped")


def test_stop_and_kill_apply_to_active_runs_only() -> None:
    for verb in ("stop", "kill"):
        allowed = statuses_allowed(INSTANCE_ACTIONS[verb], with_step=True)
        assert allowed == ("queued", "running"), verb
        assert INSTANCE_ACTIONS[verb].step == "ignored"


def test_unblock_checks_the_block_not_the_status_and_skip_needs_a_step() -> None:
    assert statuses_allowed(INSTANCE_ACTIONS["unblock"], with_step=False) is None
    assert INSTANCE_ACTIONS["unblock"].must_block
    assert INSTANCE_ACTIONS["skip_step"].step == "required"
    assert WORKFLOW_ACTIONS["unblock"].must_be_blocked and not WORKFLOW_ACTIONS["stop"].must_be_blocked


def test_every_action_the_scheduler_knows_has_one_endpoint() -> None:
    sent = [r.action for r in INSTANCE_ACTIONS.values()] + [r.action for r in WORKFLOW_ACTIONS.values()]
    assert sorted(sent) == sorted(get_args(ActionKind))
    api = ActionApi(None, None, None, wake_relay=lambda: None)  # type: ignore[arg-type]
    assert set(api.endpoints()) == {
        "instance.stop",
        "instance.kill",
        "instance.restart",
        "instance.unblock",
        "instance.skip_step",
        "workflow.stop",
        "workflow.kill",
        "workflow.unblock",
    }
