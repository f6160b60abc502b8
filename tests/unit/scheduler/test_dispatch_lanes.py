"""Which lane of its executor queue an attempt goes to: the lead lane (served first) while fewer than
``dispatch_lead`` of the workflow's attempts sent there are waiting or running, else the bulk lane."""

from __future__ import annotations

from legato.scheduler.engine import DispatchLimits, RunEngine
from legato.scheduler.state import AttemptState
from tests.support.strategy_engine import WindowDriver

LEAD = "legato.work.default"
BULK = "legato.work.default.bulk"


class LaneDriver(WindowDriver):
    """Each operation a batch of its own, with a lead of 2 and a window of 10; ``sent``: the subject each
    run's work item went to."""

    limits = DispatchLimits(window=10, lead=2)

    def __init__(self) -> None:
        super().__init__("parallel", 100)
        self.sent: dict[str, str] = {}

    def _commit(self, engine: RunEngine) -> None:
        super()._commit(engine)
        for msg in engine.uow.outbox:
            if msg.subject.startswith("legato.work."):
                run = next(a.instance_id for a in engine.uow.attempts.values() if a.id == msg.msg_id)
                self.sent[run] = msg.subject

    def attempt(self, run: str) -> AttemptState:
        inst = self.state.instances[run]
        return inst.attempts[inst.steps["work"].current_attempt_id or ""]


def test_a_workflows_first_attempts_go_to_the_lead_lane_and_the_rest_to_the_bulk_lane() -> None:
    driver = LaneDriver()
    for run in ("a", "b", "c", "d"):
        driver.trigger(run)
    assert driver.sent == {"a": LEAD, "b": LEAD, "c": BULK, "d": BULK}
    assert driver.state.lead_in_flight == {"default": 2}
    assert driver.state.unstarted == {"default": 4}  # the window counts both lanes


def test_a_running_attempt_keeps_its_lead_place_until_it_ends() -> None:
    driver = LaneDriver()
    for run in ("a", "b"):
        driver.trigger(run)
    # a starts on its executor: it left the queue, but it still holds an executor slot of the lead lane.
    driver.attempt("a").status = "running"
    driver.state.note_left_queue(driver.attempt("a"))
    driver.trigger("c")
    assert driver.sent["c"] == BULK
    assert driver.state.unstarted == {"default": 2}  # b and c wait; a runs
    # a ends: the next batch recounts, and the next attempt takes a's place in the lead lane.
    driver.finish("a", True)
    driver.trigger("d")
    assert driver.sent["d"] == LEAD
    assert driver.state.lead_in_flight == {"default": 2}  # b and d


def test_a_result_waiting_in_the_mailbox_frees_its_lead_place() -> None:
    driver = LaneDriver()
    for run in ("a", "b"):
        driver.trigger(run)
    driver.waiting_results = frozenset({driver.attempt("a").id})  # a's result waits for a later batch
    driver.trigger("c")
    assert driver.sent["c"] == LEAD
    driver.waiting_results = frozenset()
    driver.finish("a", True)  # applied once: b and c hold the lead lane
    driver.trigger("d")
    assert driver.sent["d"] == BULK
    assert driver.state.lead_in_flight == {"default": 2}
