"""Run strategies on the real services: a workflow whose one step waits for a file that says its exit
code, so a test decides when each run's step ends and how, and reads what happened from Postgres.

Sync facade over an event loop in a background thread, so hypothesis' (synchronous) state machines
can drive it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from legato.client import ApiError, LegatoClient
from legato.config.settings import Settings
from tests.support.auth import creds_for
from tests.support.stack import Stack, wait_api
from tests.support.strategy_engine import run_events
from tests.support.strategy_model import RunEvent

T = TypeVar("T")

GATE_COMMAND = (
    'f="{gates}/$LEGATO_INSTANCE_ID.$LEGATO_STEP_ID"; while [ ! -f "$f" ]; do sleep 0.02; done; '
    'c=$(cat "$f"); rm -f "$f"; exit $c'
)


def strategy_yaml(strategy: str, max_concurrency: int) -> str:
    if strategy == "parallel":
        return f"{{type: parallel, max_concurrency: {max_concurrency}}}"
    return strategy


def gated_workflow(
    workflow_id: str, strategy: str, max_concurrency: int, gates: Path, steps: tuple[str, ...] = ("work",)
) -> str:
    """A chain of shell steps; each waits for the file ``<gates>/<run>.<step>`` holding its exit code."""
    lines = [f"id: {workflow_id}", f"run_strategy: {strategy_yaml(strategy, max_concurrency)}", "steps:"]
    for i, step in enumerate(steps):
        lines += [f"  - id: {step}", "    type: shell", f"    command: '{GATE_COMMAND.format(gates=gates)}'"]
        if i:
            lines.append(f"    depends_on: [{steps[i - 1]}]")
    return "\n".join(lines) + "\n"


class RealWorld:
    """One stack of real services (trigger, scheduler, executor) for many workflows."""

    def __init__(self, settings: Settings, tmp_path: Path) -> None:
        self.settings = settings
        self.gates = tmp_path / "gates"
        self.gates.mkdir()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.stack = Stack(settings, tmp_path, concurrency=32)
        self.client: LegatoClient | None = None
        self.db: asyncpg.Connection | None = None

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> RealWorld:
        self.thread.start()
        self.stack.start()
        self.client = self.run(
            LegatoClient.connect(
                self.settings.nats_url,
                namespace=self.settings.namespace,
                actor="machine",
                creds=creds_for("machine"),
            )
        )
        try:
            self.run(wait_api(self.client))
        except Exception:
            raise RuntimeError("stack did not come up:\n" + self.stack.logs()) from None
        self.db = self.run(asyncpg.connect(self.settings.database_url))
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            print(self.stack.logs())
        if self.client is not None:
            self.run(self.client.close())
        if self.db is not None:
            self.run(self.db.close())
        self.stack.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def call(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self.client is not None
        return self.run(self.client.call(endpoint, body))

    def restart_scheduler(self) -> None:
        self.stack["scheduler"].kill9()
        self.stack["scheduler"].start()


class RealSystem:
    """One workflow on the real services, named runs mapped to instance ids."""

    settle_timeout = 45.0

    def __init__(
        self,
        world: RealWorld,
        workflow_id: str,
        strategy: str,
        max_concurrency: int,
        steps: tuple[str, ...] = ("work",),
    ) -> None:
        self.world = world
        self.workflow_id = workflow_id
        self.ids: dict[str, str] = {}
        definition = gated_workflow(workflow_id, strategy, max_concurrency, world.gates, steps)
        world.call("workflow.push", {"definition": definition})

    def trigger(self, name: str) -> None:
        res = self.world.call(
            "instance.start", {"workflow_id": self.workflow_id, "params": {}, "request_id": name}
        )
        self.ids[name] = res["instance_id"]

    def finish(self, name: str, ok: bool, step: str = "work") -> None:
        gate = self.world.gates / f"{self.ids[name]}.{step}"
        tmp = gate.with_name(gate.name + ".tmp")
        tmp.write_text("0" if ok else "1")
        tmp.rename(gate)  # the step never reads a half-written file

    def stop(self, name: str, kill: bool = False) -> None:
        endpoint = "instance.kill" if kill else "instance.stop"
        self.world.call(endpoint, {"instance_id": self.ids[name], "reason": "machine says stop"})

    def restart(self, name: str) -> None:
        self.world.call("instance.restart", {"instance_id": self.ids[name], "reason": "machine says restart"})

    def unblock(self) -> None:
        self.world.call(
            "workflow.unblock", {"workflow_id": self.workflow_id, "reason": "machine says unblock"}
        )

    def restart_scheduler(self) -> None:
        self.world.restart_scheduler()

    def change_strategy(self, strategy: str, max_concurrency: int) -> None:
        body: dict[str, Any] = {"workflow_id": self.workflow_id, "run_strategy": strategy}
        if strategy == "parallel":
            body["max_concurrency"] = max_concurrency
        try:
            self.world.call("workflow.set_run_strategy", body)
        except ApiError as exc:
            assert exc.code == "conflict", exc  # refused: the model refused it too (statuses compared next)

    def statuses(self) -> dict[str, str]:
        names = {v: k for k, v in self.ids.items()}
        assert self.world.db is not None
        rows = self.world.run(
            self.world.db.fetch(
                "SELECT id, status FROM workflow_instance WHERE workflow_id = $1", self.workflow_id
            )
        )
        return {names.get(r["id"], r["id"]): r["status"] for r in rows}

    def settle(self, expected: dict[str, str]) -> None:
        """Wait until Postgres shows what the model expects (or give up and let the check report it)."""
        deadline = time.monotonic() + self.settle_timeout
        while time.monotonic() < deadline:
            if self.statuses() == expected:
                return
            time.sleep(0.05)

    def events(self) -> list[RunEvent]:
        names = {v: k for k, v in self.ids.items()}
        assert self.world.db is not None
        rows = self.world.run(
            self.world.db.fetch(
                "SELECT instance_id, event FROM timeline WHERE instance_id = ANY($1::text[]) AND step_id IS NULL "
                "ORDER BY id",
                list(self.ids.values()),
            )
        )
        return run_events([(names[r["instance_id"]], r["event"]) for r in rows])
