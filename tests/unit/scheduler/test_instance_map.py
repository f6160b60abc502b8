"""What a batch no longer scans every run for: the versions its runs use, and (more than once a
second) the attempts waiting in executor queues, still recounted every batch."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from legato.scheduler.instance_map import InstanceMap
from tests.support.strategy_engine import WindowDriver


@dataclass
class Run:
    version: int


def test_the_map_knows_the_versions_of_the_runs_it_holds() -> None:
    runs: InstanceMap[Run] = InstanceMap()
    runs["a"] = Run(1)
    runs["b"] = Run(1)
    runs["c"] = Run(2)
    assert runs.versions() == {1, 2}
    runs["c"] = Run(3)  # replaced: its old version goes with it
    assert runs.versions() == {1, 3}
    assert runs.pop("c").version == 3
    assert runs.pop("gone", None) is None
    with pytest.raises(KeyError):
        runs.pop("gone")
    assert runs.versions() == {1}
    del runs["a"]
    assert runs.versions() == {1}  # b still runs it
    del runs["b"]
    assert runs.versions() == set() and not runs
    runs["d"] = Run(4)
    runs.clear()
    assert runs.versions() == set()
    for change in (lambda: runs.update(x=Run(5)), lambda: runs.setdefault("x", Run(5)), runs.popitem):
        with pytest.raises(TypeError, match="changes through"):
            change()
    assert runs.versions() == set()


def window_full() -> WindowDriver:
    """Runs a, b and c started: a and b fill the window of 2, c's step is held."""
    driver = WindowDriver("parallel", 10)
    for name in ("a", "b", "c"):
        driver.trigger(name)
    assert driver.state.unstarted == {"default": 2}
    assert driver.state.instances["c"].steps["work"].status == "waiting"
    return driver


def test_a_batch_recounts_the_waiting_attempts_without_scanning_every_run() -> None:
    driver = window_full()
    state = driver.state
    # A path that ends an attempt without saying so (the recount is the safety net for such a bug):
    # the next batch drops it from the count, without a scan of every run, and the held step goes.
    lost = state.instances["a"].attempts[state.instances["a"].steps["work"].current_attempt_id or ""]
    lost.status = "lost"
    state.indexed_at = time.monotonic()
    driver.trigger("d")
    assert state.instances["c"].steps["work"].status == "queued"
    assert lost.id not in state.dispatched
    assert state.unstarted == {"default": 2}  # b and c; d is held
    assert state.instances["d"].steps["work"].status == "waiting"


def test_an_attempt_dispatched_by_a_silent_path_is_counted_within_a_second() -> None:
    driver = WindowDriver("parallel", 10)
    driver.trigger("a")
    state = driver.state
    inst = state.instances["a"]
    at = inst.attempts[inst.steps["work"].current_attempt_id or ""]
    state.dispatched.clear()  # as if dispatched by a path that did not count it
    state.indexed_at = time.monotonic()
    state.begin_batch()
    assert state.unstarted == {}
    state.indexed_at = time.monotonic() - 1.0
    state.begin_batch()
    assert state.unstarted == {"default": 1}
    assert state.dispatched == {at.id: ("a", "default")}


def test_a_result_waiting_in_the_mailbox_frees_its_slot_and_is_not_freed_twice() -> None:
    driver = window_full()
    state = driver.state
    # a's result has arrived and waits for the next batch: a left the executor queue, so this batch
    # sends c at once instead of holding it until the result is applied.
    a_attempt = state.instances["a"].steps["work"].current_attempt_id or ""
    driver.waiting_results = frozenset({a_attempt})
    driver.trigger("d")
    assert state.instances["c"].steps["work"].status == "queued"
    assert state.unstarted == {"default": 2}  # b and c; d is held
    assert state.instances["d"].steps["work"].status == "waiting"
    # The batch that applies a's result counts a again and frees it once: b and c still fill the window.
    driver.waiting_results = frozenset()
    driver.finish("a", True)
    assert driver.statuses()["a"] == "succeeded"
    assert state.unstarted == {"default": 2}
    assert state.instances["d"].steps["work"].status == "waiting"
    driver.finish("b", True)
    assert state.instances["d"].steps["work"].status == "queued"
    assert state.unstarted == {"default": 2}  # c and d
