"""The executor against a real nats-server and a real PostgreSQL: work items go in on the work queue,
AttemptStarted/AttemptFinished come out on the events stream. Executors run in-process (the same
wiring as ``run_executor``) and as real ``python -m legato.executor`` processes for kill -9 and SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
import pytest
from nats.aio.client import Client

from legato.bus import (
    ConsumerSpec,
    OutgoingMessage,
    PublishError,
    Topology,
    provision_consumer,
    provision_streams,
)
from legato.bus.streams import bucket_stream
from legato.config.settings import Settings
from legato.executor import ExecutorOptions, ExecutorService
from legato.executor.claims import AttemptClaims
from legato.protocol import AttemptFinished, AttemptStarted, CancelAttempt, WorkItem, decode_event, encode
from legato.protocol.messages import DEAD_LETTER_DECODER
from legato.runtime.host import ServiceHost
from legato.telemetry import configure_tracing, get_tracer, inject_headers
from tests.support.auth import scheduler_publisher
from tests.support.processes import process_gone, read_pid, wait_gone

ACK_WAIT = 2.0
WORKFLOW = "wf-exec"


@pytest.fixture(scope="module", autouse=True)
def tracing() -> None:
    # Real spans, so the trace context carried through the executor can be checked.
    configure_tracing("executor-test")


class EventLog:
    """A test consumer on the events stream collecting every message with its headers."""

    def __init__(self, nc: Client, topo: Topology) -> None:
        self.js = nc.jetstream()
        self.topo = topo
        self.records: list[tuple[AttemptStarted | AttemptFinished, dict[str, str]]] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        await provision_streams(self.js, self.topo)
        spec = ConsumerSpec(
            stream=self.topo.events_stream,
            durable=self.topo.consumer_name("test_events"),
            filter_subject=f"{self.topo.subject_prefix('event')}>",
        )
        await provision_consumer(self.js, spec)
        sub = await self.js.pull_subscribe_bind(spec.durable, spec.stream)
        self._task = asyncio.create_task(self._pull(sub))

    async def stop(self) -> None:
        # A flag as well as cancel(): on Python 3.11 nats-py's fetch can swallow a cancellation that
        # coincides with the server's 408 at the fetch deadline (asyncio.wait_for, gh-86296).
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _pull(self, sub: Any) -> None:
        while not self._stopping:
            try:
                msgs = await sub.fetch(100, timeout=0.2)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            for m in msgs:
                self.records.append((decode_event(m.data), dict(m.headers or {})))
                await m.ack()

    def finished_for(self, attempt_id: str) -> list[tuple[AttemptFinished, dict[str, str]]]:
        return [
            (e, h) for e, h in self.records if isinstance(e, AttemptFinished) and e.attempt_id == attempt_id
        ]

    def started_for(self, attempt_id: str) -> list[tuple[AttemptStarted, dict[str, str]]]:
        return [
            (e, h) for e, h in self.records if isinstance(e, AttemptStarted) and e.attempt_id == attempt_id
        ]

    async def finished(self, attempt_id: str, timeout: float = 15.0) -> AttemptFinished:
        return (await self.finished_with_headers(attempt_id, timeout))[0]

    async def finished_with_headers(
        self, attempt_id: str, timeout: float = 15.0
    ) -> tuple[AttemptFinished, dict[str, str]]:
        async with asyncio.timeout(timeout):
            while not (found := self.finished_for(attempt_id)):
                await asyncio.sleep(0.02)
        return found[0]

    async def started(self, attempt_id: str, timeout: float = 10.0) -> AttemptStarted:
        async with asyncio.timeout(timeout):
            while not (found := self.started_for(attempt_id)):
                await asyncio.sleep(0.02)
        return found[0][0]


@pytest.fixture
async def events(nc: Client, topo: Topology) -> AsyncIterator[EventLog]:
    log = EventLog(nc, topo)
    await log.start()
    yield log
    await log.stop()


def work(
    topo: Topology,
    step_type: str,
    config: dict[str, Any] | None = None,
    *,
    params: dict[str, Any] | None = None,
    timeout: float | None = None,
) -> WorkItem:
    return WorkItem(
        attempt_id=f"att-{uuid.uuid4().hex[:12]}",
        workflow_id=WORKFLOW,
        instance_id=f"inst-{uuid.uuid4().hex[:8]}",
        step_id="step_one",
        attempt=1,
        step_type=step_type,
        config=config or {},
        params=params or {},
        timeout=timeout,
        reply_subject=topo.event_subject(WORKFLOW),
        dispatched_at=time.time(),
    )


async def submit(nc: Client, topo: Topology, *items: WorkItem, headers: dict[str, str] | None = None) -> None:
    await scheduler_publisher(nc, topo).publish_many(
        [
            OutgoingMessage(topo.work_subject("default"), encode(i), msg_id=None, headers=headers or {})
            for i in items
        ]
    )


async def cancel(nc: Client, topo: Topology, attempt_id: str, reason: str) -> None:
    await nc.publish(
        topo.cancel_subject(attempt_id), encode(CancelAttempt(attempt_id=attempt_id, reason=reason))
    )
    await nc.flush()


@asynccontextmanager
async def executor(
    settings: Settings,
    *,
    concurrency: int = 4,
    executor_id: str = "exec-test",
    grace_period: float | None = None,
) -> AsyncIterator[ExecutorService]:
    """An executor in this process, wired as ``run_executor`` does (no signal handlers)."""
    if grace_period is not None:
        settings = msgspec.structs.replace(settings, grace_period=grace_period)
    options = ExecutorOptions(
        queue="default", concurrency=concurrency, executor_id=executor_id, ack_wait=ACK_WAIT, kill_grace=1.0
    )
    async with ServiceHost(
        "executor", settings, with_relay=False, configure_process=False, with_database=False
    ) as host:
        service = ExecutorService.on_host(host, options)
        host.add(service)
        task = asyncio.create_task(host.run(handle_signals=False))
        ready = asyncio.create_task(service.ready.wait())
        await asyncio.wait({task, ready}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if task.done():
            task.result()  # raise what stopped it
        assert service.ready.is_set(), "executor did not start"
        try:
            yield service
        finally:
            host.request_shutdown()
            await asyncio.wait_for(task, timeout=20)


def path_exists(path: str | Path) -> bool:
    return os.path.exists(path)


# --- step types ------------------------------------------------------------------------------------


async def test_noop_reports_once_with_attempt_id_as_msg_id_and_the_callers_trace(
    nc: Client, topo: Topology, events: EventLog, settings: Settings
) -> None:
    item = work(topo, "noop")
    with get_tracer().start_as_current_span("scheduler dispatch"):
        trace_headers = inject_headers()
    async with executor(settings) as ex:
        await submit(nc, topo, item, headers=trace_headers)
        finished, headers = await events.finished_with_headers(item.attempt_id)
        await asyncio.sleep(0.3)  # a late AttemptStarted would show up by now
    assert finished.outcome == "succeeded" and finished.outputs == {} and finished.error is None
    assert finished.executor == ex.executor_id == "exec-test"
    assert finished.workflow_id == WORKFLOW and finished.instance_id == item.instance_id
    assert headers["Nats-Msg-Id"] == item.attempt_id
    # A fast step costs one message, not two.
    assert events.started_for(item.attempt_id) == []
    # The result continues the trace that came with the work item (a child span, not the same one).
    sent_trace, sent_span = trace_headers["traceparent"].split("-")[1:3]
    got_trace, got_span = headers["traceparent"].split("-")[1:3]
    assert got_trace == sent_trace and got_span != sent_span


async def test_sleep_is_announced_then_finishes_after_its_duration(
    nc: Client, topo: Topology, events: EventLog, settings: Settings
) -> None:
    item = work(topo, "sleep", {"duration": 0.6})
    async with executor(settings):
        await submit(nc, topo, item)
        started = await events.started(item.attempt_id)
        finished, _ = await events.finished_with_headers(item.attempt_id)
    assert finished.outcome == "succeeded"
    assert finished.finished_at - finished.started_at >= 0.6
    assert started.started_at == finished.started_at
    [(_, started_headers)] = events.started_for(item.attempt_id)
    assert started_headers["Nats-Msg-Id"] == f"{item.attempt_id}:started"
    kinds = [type(e).__name__ for e, _ in events.records]
    assert kinds == ["AttemptStarted", "AttemptFinished"]


async def test_shell_sees_params_and_reports_outputs_in_both_formats(
    nc: Client, topo: Topology, events: EventLog, settings: Settings
) -> None:
    as_json = work(
        topo,
        "shell",
        {
            "command": textwrap.dedent(
                """
                echo "working in $PWD"
                cat > "$LEGATO_OUTPUTS" <<EOF
                {"name": "$LEGATO_PARAM_NAME", "count": $LEGATO_PARAM_COUNT, "tags": $LEGATO_PARAM_TAGS,
                 "all": $LEGATO_PARAMS, "who": "$LEGATO_WORKFLOW_ID/$LEGATO_INSTANCE_ID/$LEGATO_STEP_ID/$LEGATO_ATTEMPT"}
                EOF
                """
            )
        },
        params={"name": "ada", "count": 3, "tags": ["x", "y"]},
    )
    as_lines = work(
        topo,
        "shell",
        {
            "command": (
                'echo "rows=42" >> "$LEGATO_OUTPUTS"; echo "label=$LEGATO_PARAM_LABEL" >> "$LEGATO_OUTPUTS";'
                ' echo \'meta={"ok": true}\' >> "$LEGATO_OUTPUTS"; echo done >&2'
            )
        },
        params={"label": "hello world"},
    )
    async with executor(settings):
        await submit(nc, topo, as_json, as_lines)
        first = await events.finished(as_json.attempt_id)
        second = await events.finished(as_lines.attempt_id)
    assert first.outcome == "succeeded", first.error
    assert first.exit_code == 0
    assert first.outputs == {
        "name": "ada",
        "count": 3,
        "tags": ["x", "y"],
        "all": {"name": "ada", "count": 3, "tags": ["x", "y"]},
        "who": f"{WORKFLOW}/{as_json.instance_id}/step_one/1",
    }
    assert first.log_tail is not None and "working in" in first.log_tail
    workdir = first.log_tail.split("working in ", 1)[1].split()[0]
    assert not path_exists(workdir)  # the per-attempt folder is removed afterwards
    assert second.outcome == "succeeded", second.error
    assert second.outputs == {"rows": 42, "label": "hello world", "meta": {"ok": True}}
    assert second.log_tail == "done\n"


async def test_shell_failure_reports_exit_code_and_stderr_tail(
    nc: Client, topo: Topology, events: EventLog, settings: Settings
) -> None:
    failing = work(topo, "shell", {"command": "echo progress; echo 'disk full' >&2; exit 7"})
    bad_outputs = work(topo, "shell", {"command": "echo 'not a pair' > \"$LEGATO_OUTPUTS\""})
    async with executor(settings):
        await submit(nc, topo, failing, bad_outputs)
        result = await events.finished(failing.attempt_id)
        outputs_result = await events.finished(bad_outputs.attempt_id)
    assert result.outcome == "failed"
    assert result.exit_code == 7
    assert result.error == "exit code 7: disk full"
    assert result.log_tail == "progress\ndisk full\n"
    assert outputs_result.outcome == "failed"
    assert (
        outputs_result.error is not None and "outputs file line 1: expected key=value" in outputs_result.error
    )


async def test_shell_timeout_kills_the_whole_process_group(
    nc: Client, topo: Topology, events: EventLog, settings: Settings, tmp_path: Path
) -> None:
    pidfile = tmp_path / "child.pid"
    item = work(
        topo,
        "shell",
        {"command": 'echo before; sleep 1000 & echo $! > "$LEGATO_PARAM_PIDFILE"; wait'},
        params={"pidfile": str(pidfile)},
        timeout=1.0,
    )
    async with executor(settings):
        await submit(nc, topo, item)
        child = await read_pid(pidfile)
        assert not process_gone(child)
        result = await events.finished(item.attempt_id)
        assert await wait_gone(child), "the backgrounded sleep survived the timeout"
    assert result.outcome == "timed_out"
    assert result.error == "timed out after 1s"
    assert result.log_tail == "before\n"
    assert 1.0 <= result.finished_at - result.started_at < 5.0


async def test_cancel_stops_a_running_step_and_one_not_yet_delivered(
    nc: Client, topo: Topology, events: EventLog, settings: Settings, tmp_path: Path
) -> None:
    pidfile = tmp_path / "child.pid"
    running = work(
        topo,
        "shell",
        {"command": 'sleep 1000 & echo $! > "$LEGATO_PARAM_PIDFILE"; wait'},
        params={"pidfile": str(pidfile)},
    )
    marker = tmp_path / "ran"
    early = work(topo, "shell", {"command": f"touch {marker}"})
    async with executor(settings):
        await submit(nc, topo, running)
        await events.started(running.attempt_id)
        child = await read_pid(pidfile)
        await cancel(nc, topo, running.attempt_id, "stopped by operator")
        result = await events.finished(running.attempt_id)
        assert await wait_gone(child)
        # The cancel overtakes its work item: the item must not run when it arrives.
        await cancel(nc, topo, early.attempt_id, "instance killed")
        await submit(nc, topo, early)
        early_result = await events.finished(early.attempt_id)
    assert result.outcome == "cancelled"
    assert result.error == "cancelled: stopped by operator"
    assert early_result.outcome == "cancelled"
    assert early_result.error == "cancelled before it started: instance killed"
    assert not path_exists(marker)


STEP_MODULE = """
import asyncio, os, sys, time

def greet(params):
    print("hello from", params["name"])
    print("to stderr", file=sys.stderr)
    return {"greeting": "hi " + params["name"], "n": params["n"] + 1}

async def agreet(params):
    await asyncio.sleep(0.01)
    return None

def explode(params):
    raise ValueError("bad input: " + str(params["n"]))

def crash(params):
    os._exit(3)

def not_json(params):
    return {"when": time}

def hang(params):
    with open(params["pidfile"], "w") as f:
        f.write(str(os.getpid()))
    time.sleep(1000)
"""


@pytest.fixture
def step_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    folder = tmp_path / "pymods"
    folder.mkdir()
    (folder / "exec_test_steps.py").write_text(STEP_MODULE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]))
    return "exec_test_steps"


async def test_python_functions_succeed_fail_and_report_their_errors(
    nc: Client, topo: Topology, events: EventLog, settings: Settings, step_module: str
) -> None:
    greet = work(topo, "python", {"function": f"{step_module}:greet"}, params={"name": "ada", "n": 1})
    agreet = work(topo, "python", {"function": f"{step_module}:agreet"})
    explode = work(topo, "python", {"function": f"{step_module}:explode"}, params={"n": 5})
    not_json = work(topo, "python", {"function": f"{step_module}:not_json"})
    missing = work(topo, "python", {"function": "no_such_module_xyz:fn"})
    async with executor(settings):
        await submit(nc, topo, greet, agreet, explode, not_json, missing)
        results = {
            i.attempt_id: await events.finished(i.attempt_id)
            for i in (greet, agreet, explode, not_json, missing)
        }
    ok = results[greet.attempt_id]
    assert ok.outcome == "succeeded", ok.error
    assert ok.outputs == {"greeting": "hi ada", "n": 2}
    assert ok.log_tail is not None and "hello from ada" in ok.log_tail and "to stderr" in ok.log_tail
    assert results[agreet.attempt_id].outcome == "succeeded"
    assert results[agreet.attempt_id].outputs == {}
    failed = results[explode.attempt_id]
    assert failed.outcome == "failed"
    assert failed.error is not None and failed.error.startswith("ValueError: bad input: 5\nTraceback")
    assert "exec_test_steps.py" in failed.error
    assert results[not_json.attempt_id].outcome == "failed"
    assert "not JSON" in (results[not_json.attempt_id].error or "")
    assert results[missing.attempt_id].error == (
        "cannot import module 'no_such_module_xyz': ModuleNotFoundError: No module named 'no_such_module_xyz'"
    )


async def test_python_crash_and_hang_do_not_hurt_the_executor(
    nc: Client, topo: Topology, events: EventLog, settings: Settings, step_module: str, tmp_path: Path
) -> None:
    pidfile = tmp_path / "worker.pid"
    crash = work(topo, "python", {"function": f"{step_module}:crash"})
    hang = work(
        topo, "python", {"function": f"{step_module}:hang"}, params={"pidfile": str(pidfile)}, timeout=1.5
    )
    after = work(topo, "python", {"function": f"{step_module}:greet"}, params={"name": "bo", "n": 0})
    async with executor(settings, concurrency=1):
        await submit(nc, topo, crash, hang, after)
        crashed = await events.finished(crash.attempt_id)
        worker = await read_pid(pidfile)
        hung = await events.finished(hang.attempt_id)
        assert await wait_gone(worker), "the hung worker process survived its timeout"
        next_one = await events.finished(after.attempt_id)
    assert crashed.outcome == "failed"
    assert crashed.exit_code == 3
    assert crashed.error == "python worker ended before reporting a result (exit code 3)"
    assert hung.outcome == "timed_out" and hung.error == "timed out after 1.5s"
    assert next_one.outcome == "succeeded" and next_one.outputs == {"greeting": "hi bo", "n": 1}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/fail":
            self._send(500, b"down for maintenance", "text/plain")
        else:
            self._send(200, json.dumps({"hello": "world", "path": self.path}).encode(), "application/json")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        echo = {
            "got": json.loads(body),
            "type": self.headers["Content-Type"],
            "token": self.headers["X-Token"],
        }
        self._send(201, json.dumps(echo).encode(), "application/json; charset=utf-8")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Ignored", "not kept")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_http_success_failure_status_and_connection_refused(
    nc: Client, topo: Topology, events: EventLog, settings: Settings, http_server: str
) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    get = work(topo, "http", {"url": f"{http_server}/items"})
    post = work(
        topo,
        "http",
        {
            "url": f"{http_server}/echo",
            "method": "POST",
            "headers": {"X-Token": "t0k"},
            "body": {"a": [1, 2]},
            "success_status": [201],
        },
    )
    failing = work(topo, "http", {"url": f"{http_server}/fail"})
    refused = work(topo, "http", {"url": f"http://127.0.0.1:{closed_port}/", "timeout": 2})
    async with executor(settings):
        await submit(nc, topo, get, post, failing, refused)
        results = {i.attempt_id: await events.finished(i.attempt_id) for i in (get, post, failing, refused)}
    got = results[get.attempt_id]
    assert got.outcome == "succeeded", got.error
    assert got.outputs["status"] == 200
    assert got.outputs["body"] == {"hello": "world", "path": "/items"}
    assert got.outputs["headers"]["content-type"] == "application/json"
    assert "x-ignored" not in got.outputs["headers"]
    posted = results[post.attempt_id]
    assert posted.outcome == "succeeded", posted.error
    assert posted.outputs["body"] == {"got": {"a": [1, 2]}, "type": "application/json", "token": "t0k"}
    down = results[failing.attempt_id]
    assert down.outcome == "failed"
    assert down.error == f"HTTP 500 from {http_server}/fail"
    assert down.outputs["body"] == "down for maintenance"
    assert results[refused.attempt_id].outcome == "failed"
    assert "Connection refused" in (results[refused.attempt_id].error or "")


async def test_unknown_step_type_and_bad_config_fail_without_dead_letters(
    nc: Client, topo: Topology, events: EventLog, settings: Settings
) -> None:
    unknown = work(topo, "teleport")
    bad = work(topo, "sleep", {"duration": "soon"})
    async with executor(settings):
        await submit(nc, topo, unknown, bad)
        unknown_result = await events.finished(unknown.attempt_id)
        bad_result = await events.finished(bad.attempt_id)
    assert unknown_result.outcome == "failed"
    # The built-in types, then any installed plugin's (examples/plugin's word_count after `make install`).
    assert (unknown_result.error or "").startswith(
        "unknown step type 'teleport'; this executor runs: container, http, noop, notebook, python, shell, sleep, sql"
    )
    assert bad_result.outcome == "failed"
    assert bad_result.error == "invalid step config: config.duration: expected `float`, got `str`"
    # The executor has no database: its dead letters would be on the dead-letter stream.
    dead = await nc.jetstream().stream_info(topo.deadletter_stream)
    assert dead.state.messages == 0
    info = await nc.jetstream().consumer_info(topo.work_stream, topo.consumer_name("executor_default"))
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_a_poison_work_item_is_reported_on_the_dead_letter_subject_not_lost(
    nc: Client, topo: Topology, events: EventLog, settings: Settings
) -> None:
    async with executor(settings):
        await scheduler_publisher(nc, topo).publish(
            OutgoingMessage(topo.work_subject("default"), b'{"kind": "work", "nonsense', msg_id="poison-1")
        )
        js = nc.jetstream()
        sub = await js.pull_subscribe(topo.deadletter_subject("executor"), stream=topo.deadletter_stream)
        [msg] = await sub.fetch(1, timeout=15)
        await msg.ack()
    report = DEAD_LETTER_DECODER.decode(msg.data)
    assert report.service == "executor" and report.consumer == topo.consumer_name("executor_default")
    assert report.stream == topo.work_stream and report.msg_id == "poison-1"
    assert report.payload == b'{"kind": "work", "nonsense' and report.error.startswith("undecodable message")
    info = await nc.jetstream().consumer_info(topo.work_stream, topo.consumer_name("executor_default"))
    assert info.num_ack_pending == 0 and info.num_pending == 0


# --- delivery semantics ------------------------------------------------------------------------------


async def test_concurrency_bounds_overlapping_attempts(
    nc: Client, topo: Topology, events: EventLog, settings: Settings
) -> None:
    items = [work(topo, "sleep", {"duration": 0.4}) for _ in range(10)]
    async with executor(settings, concurrency=3):
        await submit(nc, topo, *items)
        results = [await events.finished(i.attempt_id) for i in items]
    assert all(r.outcome == "succeeded" for r in results)
    edges = sorted([(r.started_at, 1) for r in results] + [(r.finished_at, -1) for r in results])
    running = peak = 0
    for _, delta in edges:
        running += delta
        peak = max(peak, running)
    assert peak == 3


async def test_repeated_work_item_runs_once_and_republishes_the_same_result(
    nc: Client, topo: Topology, events: EventLog, settings: Settings
) -> None:
    item = work(topo, "sleep", {"duration": 0.5})
    async with executor(settings) as ex:
        # Two copies while it runs (the second waits for the first), a third after it finished.
        await submit(nc, topo, item, item)
        await events.finished(item.attempt_id)
        await submit(nc, topo, item)
        async with asyncio.timeout(10):
            while ex.attempts.stats["republished"] < 1:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
    assert ex.attempts.stats["executed"] == 1
    # Every republish carried the same Nats-Msg-Id, so the stream kept one result.
    assert len(events.finished_for(item.attempt_id)) == 1
    info = await nc.jetstream().consumer_info(topo.work_stream, topo.consumer_name("executor_default"))
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_graceful_shutdown_finishes_a_short_step_and_abandons_a_long_one(
    nc: Client, topo: Topology, events: EventLog, settings: Settings, tmp_path: Path
) -> None:
    pidfile = tmp_path / "long.pid"
    short = work(topo, "sleep", {"duration": 1.0})
    long = work(
        topo,
        "shell",
        {"command": 'sleep 1000 & echo $! > "$LEGATO_PARAM_PIDFILE"; wait'},
        params={"pidfile": str(pidfile)},
    )
    async with executor(settings, grace_period=2.0, executor_id="exec-old"):
        await submit(nc, topo, short, long)
        await events.started(short.attempt_id)
        await events.started(long.attempt_id)
        child = await read_pid(pidfile)
        # Leaving the block shuts the host down as SIGTERM does: stop fetching, let attempts finish.
    # The short step finished within the grace period; past it the long one was killed, unreported, unacked.
    finished_short = await events.finished(short.attempt_id)
    assert finished_short.outcome == "succeeded" and finished_short.executor == "exec-old"
    assert await wait_gone(child)
    assert events.finished_for(long.attempt_id) == []
    # The next executor gets it after ack_wait and reports it lost, without running it again.
    async with executor(settings, executor_id="exec-new"):
        lost = await events.finished(long.attempt_id, timeout=ACK_WAIT + 10)
    assert lost.outcome == "platform_error" and lost.executor == "exec-new"
    assert lost.error == "attempt lost: delivered 2 times (executor crashed or lost its connection)"


# --- a real executor process -----------------------------------------------------------------------


@asynccontextmanager
async def executor_process(
    settings: Settings, tmp_path: Path, executor_id: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    log_path = tmp_path / f"{executor_id}.log"
    env = {
        **os.environ,
        "LEGATO_NAMESPACE": settings.namespace,
        "LEGATO_PARTITIONS": str(settings.partitions),
        "LEGATO_LOG_FORMAT": "json",
        "LEGATO_GRACE_PERIOD": "5",
    }
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "legato.executor",
            "--queue",
            "default",
            "--concurrency",
            "2",
            "--ack-wait",
            str(ACK_WAIT),
            "--executor-id",
            executor_id,
            "--nats-url",
            settings.nats_url,
            env=env,
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
        )
    try:
        async with asyncio.timeout(20):
            while b'"executor_started"' not in log_path.read_bytes():
                assert proc.returncode is None, log_path.read_text()
                await asyncio.sleep(0.05)
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_executor_process_stops_on_sigterm_after_finishing_its_step(
    nc: Client, topo: Topology, events: EventLog, settings: Settings, tmp_path: Path
) -> None:
    item = work(topo, "sleep", {"duration": 1.0})
    async with executor_process(settings, tmp_path, "exec-proc") as proc:
        await submit(nc, topo, item)
        started = await events.started(item.attempt_id)
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), timeout=15)
    assert started.executor == "exec-proc"
    assert code == 0, (tmp_path / "exec-proc.log").read_text()
    result = await events.finished(item.attempt_id)
    assert result.outcome == "succeeded" and result.executor == "exec-proc"


async def test_killed_executor_process_leaves_a_lost_attempt_reported_by_the_next(
    nc: Client, topo: Topology, events: EventLog, settings: Settings, tmp_path: Path
) -> None:
    item = work(topo, "sleep", {"duration": 60})
    async with executor_process(settings, tmp_path, "exec-doomed") as proc:
        await submit(nc, topo, item)
        await events.started(item.attempt_id)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    async with executor(settings, executor_id="exec-survivor") as ex:
        lost = await events.finished(item.attempt_id, timeout=ACK_WAIT + 10)
    assert lost.outcome == "platform_error"
    assert lost.executor == "exec-survivor"
    assert lost.error == "attempt lost: delivered 2 times (executor crashed or lost its connection)"
    assert ex.attempts.stats["executed"] == 0  # reported, not run again
    assert len(events.finished_for(item.attempt_id)) == 1


# --- durable dedup by attempt id -------------------------------------------------------------------


async def test_a_work_item_republished_under_new_msg_ids_runs_once_across_executors_and_restarts(
    nc: Client, topo: Topology, events: EventLog, settings: Settings, tmp_path: Path
) -> None:
    ran = tmp_path / "ran.log"
    item = work(topo, "shell", {"command": f'echo "$LEGATO_ATTEMPT_ID" >> {ran}; sleep 1.5'})

    async def republish(msg_id: str) -> None:
        # A new Nats-Msg-Id each time: JetStream's duplicate window does not catch it (as for an outbox
        # row republished after the window).
        await scheduler_publisher(nc, topo).publish(
            OutgoingMessage(topo.work_subject("default"), encode(item), msg_id=msg_id)
        )

    async def settled() -> None:
        # Everything published is acked: the consumer counts a new message as pending a moment after
        # its PubAck, so "nothing pending" alone can be read before the last copy was seen at all.
        js = nc.jetstream()
        last = (await js.stream_info(topo.work_stream)).state.last_seq
        async with asyncio.timeout(20):
            while True:
                info = await js.consumer_info(topo.work_stream, topo.consumer_name("executor_default"))
                if info.num_ack_pending == 0 and info.ack_floor.stream_seq >= last:
                    return
                await asyncio.sleep(0.05)

    async with executor(settings, executor_id="exec-one") as one:
        await republish("copy-1")
        await events.started(item.attempt_id)
        async with executor(settings, executor_id="exec-two") as two:
            await republish("copy-2")  # while the first copy runs, at either executor
            first = await events.finished(item.attempt_id)
            await settled()
    # Every executor that saw it is gone, with its memory: a new one must still not run it again.
    async with executor(settings, executor_id="exec-three") as three:
        await republish("copy-3")
        await settled()
    stats = one.attempts.stats + two.attempts.stats + three.attempts.stats
    assert ran.read_text().splitlines() == [item.attempt_id]
    assert first.outcome == "succeeded" and first.executor == "exec-one"
    assert stats["executed"] == 1 and stats["lost"] == 0, stats
    # The last copy found the attempt claimed and did not run it; its result had landed at once, so
    # none was kept and none published again: the stream holds the one result.
    assert three.attempts.stats["duplicate_not_run"] == 1 and three.attempts.stats["executed"] == 0
    assert three.attempts.stats["republished"] == 0
    assert len(events.finished_for(item.attempt_id)) == 1


async def test_a_redelivered_item_that_never_started_runs_instead_of_being_reported_lost(
    nc: Client, topo: Topology, events: EventLog, settings: Settings, tmp_path: Path
) -> None:
    ran = tmp_path / "ran.log"
    item = work(topo, "shell", {"command": f'echo "$LEGATO_ATTEMPT_ID" >> {ran}'})
    await submit(nc, topo, item)
    # Taken by an executor that died before claiming it: fetched, never settled, never started.
    spec = ConsumerSpec(
        stream=topo.work_stream,
        durable=topo.consumer_name("executor_default"),
        filter_subject=topo.work_subject("default"),
        ack_wait=ACK_WAIT,
    )
    await provision_consumer(nc.jetstream(), spec)
    sub = await nc.jetstream().pull_subscribe_bind(topo.consumer_name("executor_default"), topo.work_stream)
    assert len(await sub.fetch(1, timeout=5)) == 1
    async with executor(settings, executor_id="exec-next") as ex:
        finished = await events.finished(item.attempt_id, timeout=ACK_WAIT + 15)
    assert finished.outcome == "succeeded" and ex.attempts.stats["lost"] == 0
    assert ran.read_text().splitlines() == [item.attempt_id]


async def test_killed_executor_process_takes_its_whole_step_tree_along(
    nc: Client, topo: Topology, events: EventLog, settings: Settings, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    # The shell, a background child, and a grandchild that left the process group with setsid.
    command = (
        f"echo $$ >> {pids}; sleep 300 & echo $! >> {pids}; "
        f'setsid sh -c "echo \\$\\$ >> {pids}; sleep 300" & wait'
    )
    item = work(topo, "shell", {"command": command})
    async with executor_process(settings, tmp_path, "exec-tree") as proc:
        await submit(nc, topo, item)
        async with asyncio.timeout(15):
            while len(pids.read_text().split() if pids.exists() else []) < 3:
                await asyncio.sleep(0.05)
        tree = [int(p) for p in pids.read_text().split()]
        assert not any(process_gone(p) for p in tree)
        proc.send_signal(signal.SIGKILL)  # the executor alone: its steps run in sessions of their own
        await proc.wait()
        gone = await asyncio.gather(*(wait_gone(p) for p in tree))
    assert all(gone), [p for p, g in zip(tree, gone, strict=True) if not g]


async def test_an_executor_gone_after_its_result_landed_leaves_that_result(
    nc: Client, topo: Topology, events: EventLog, settings: Settings
) -> None:
    """A result that landed at once is not kept in the claim (the stream holds it). An executor that
    stops after the publish landed and before its ack leaves its item unacked: the next executor
    reports the attempt lost under the same message id (the attempt id), JetStream drops that copy, and
    the result that landed is the only one."""
    item = work(topo, "noop")
    kept: list[str] = []

    async def never_acked(*args: object, **kwargs: object) -> None:
        await asyncio.Event().wait()  # the process "dies" after its result landed, before the ack

    async with executor(settings, executor_id="exec-gone", grace_period=0.5) as ex:
        assert ex.attempts.claims is not None
        real_keep = ex.attempts.claims.keep_result

        async def keep(attempt_id: str, executor: str, payload: bytes) -> None:
            kept.append(attempt_id)
            await real_keep(attempt_id, executor, payload)

        ex.attempts.claims.keep_result = keep  # type: ignore[method-assign]
        real_publish = ex.attempts._publish_result

        async def publish_then_hang(*args: Any, **kwargs: Any) -> None:
            await real_publish(*args, **kwargs)
            await never_acked()

        ex.attempts._publish_result = publish_then_hang  # type: ignore[method-assign]
        await submit(nc, topo, item)
        landed = await events.finished(item.attempt_id)
    assert landed.outcome == "succeeded" and kept == []
    claims = AttemptClaims(nc.jetstream(), topo.attempts_bucket)
    await claims.open()
    held = await claims.get(item.attempt_id)
    assert held is not None and held.executor == "exec-gone" and held.result is None
    async with executor(settings, executor_id="exec-survivor") as ex:
        async with asyncio.timeout(ACK_WAIT + 15):
            while ex.attempts.stats["lost"] < 1:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
    assert ex.attempts.stats["executed"] == 0
    records = events.finished_for(item.attempt_id)
    assert [(e.outcome, e.executor) for e, _ in records] == [("succeeded", "exec-gone")]
    info = await nc.jetstream().consumer_info(topo.work_stream, topo.consumer_name("executor_default"))
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_a_result_whose_publish_fails_is_kept_and_a_later_copy_republishes_it(
    nc: Client, topo: Topology, events: EventLog, settings: Settings, tmp_path: Path
) -> None:
    """The events stream refuses the result (here: every publish of it fails) and the executor is lost
    while it retries: the result was kept in the claim at the first failure, so the next executor to
    get the item publishes that result instead of running the step again or reporting it lost."""
    ran = tmp_path / "ran.log"
    item = work(topo, "shell", {"command": f'echo "$LEGATO_ATTEMPT_ID" >> {ran}; echo done'})

    async with executor(settings, executor_id="exec-cut-off", grace_period=0.5) as ex:
        assert ex.attempts.claims is not None
        real_publish = ex.attempts.publisher.publish

        async def results_refused(msg: OutgoingMessage) -> object:
            if msg.msg_id == item.attempt_id:
                raise PublishError("events stream unavailable")
            return await real_publish(msg)

        ex.attempts.publisher.publish = results_refused  # type: ignore[method-assign]
        await submit(nc, topo, item)
        claims = AttemptClaims(nc.jetstream(), topo.attempts_bucket)
        await claims.open()
        async with asyncio.timeout(15):
            while (held := await claims.get(item.attempt_id)) is None or held.result is None:
                await asyncio.sleep(0.05)
        assert ex.attempts.stats["result_publish_failures"] >= 1
    assert events.finished_for(item.attempt_id) == []
    async with executor(settings, executor_id="exec-next") as ex:
        finished = await events.finished(item.attempt_id, timeout=ACK_WAIT + 15)
    assert finished.outcome == "succeeded" and finished.executor == "exec-cut-off"
    assert ex.attempts.stats["republished"] == 1 and ex.attempts.stats["executed"] == 0
    assert ex.attempts.stats["lost"] == 0
    assert ran.read_text().splitlines() == [item.attempt_id]


# --- the claims' horizon ---------------------------------------------------------------------------


async def test_a_work_item_older_than_the_claims_horizon_is_reported_and_never_run(
    nc: Client, topo: Topology, events: EventLog, settings: Settings, tmp_path: Path
) -> None:
    """Claims are kept for the bucket's TTL (8 s here, so a horizon of 4 s): an item dispatched longer
    ago than that is never claimed nor run, since a copy of it that ran may have had its claim expire.
    An old item whose claim is still there is settled by that claim, as any copy is."""
    await provision_streams(nc.jetstream(), topo, claim_ttl=8.0)
    ran = tmp_path / "ran.log"
    command = {"command": f'echo "$LEGATO_ATTEMPT_ID" >> {ran}'}
    stale = msgspec.structs.replace(work(topo, "shell", command), dispatched_at=time.time() - 5.0)
    fresh = work(topo, "shell", command)
    async with executor(settings) as ex:
        assert ex.attempts.claims is not None and await ex.attempts.claims.horizon() == 4.0
        await submit(nc, topo, stale, fresh)
        refused = await events.finished(stale.attempt_id)
        assert (await events.finished(fresh.attempt_id)).outcome == "succeeded"
    # A copy of the fresh item, once it is older than the horizon while its claim still lives, at an
    # executor without the first one's memory: it finds the claim and is not run again (nor reported:
    # the first copy's result stands).
    async with asyncio.timeout(10):
        while time.time() - fresh.dispatched_at <= 4.2:
            await asyncio.sleep(0.05)
    async with executor(settings, executor_id="exec-later") as later:
        await scheduler_publisher(nc, topo).publish(
            OutgoingMessage(topo.work_subject("default"), encode(fresh), msg_id="late-copy")
        )
        async with asyncio.timeout(10):
            while later.attempts.stats["duplicate_not_run"] < 1:
                await asyncio.sleep(0.05)
    assert refused.outcome == "platform_error"
    assert refused.error is not None
    assert re.search(r"dispatched \d+ s ago, longer than the 4 s .*LEGATO_ATTEMPT_CLAIM_TTL", refused.error)
    assert ran.read_text().splitlines() == [fresh.attempt_id]
    assert ex.attempts.stats["expired"] == 1 and ex.attempts.stats["executed"] == 1
    assert later.attempts.stats["executed"] == 0 and later.attempts.stats["expired"] == 0
    assert len(events.finished_for(fresh.attempt_id)) == 1
    # The stale item was not claimed: nothing in the bucket could let a later copy run it.
    claims = AttemptClaims(nc.jetstream(), topo.attempts_bucket)
    await claims.open()
    assert await claims.get(stale.attempt_id) is None


async def test_the_bucket_ttl_follows_the_setting_and_executors_read_it_from_the_bucket(
    nc: Client, topo: Topology
) -> None:
    js = nc.jetstream()
    await provision_streams(js, topo, claim_ttl=7200.0)
    claims = AttemptClaims(js, topo.attempts_bucket)
    await claims.open()
    assert claims.ttl == 7200.0 and await claims.horizon() == 3600.0
    # A stateful service started with another LEGATO_ATTEMPT_CLAIM_TTL changes the bucket in place.
    await provision_streams(js, topo, claim_ttl=30 * 3600.0)
    assert (await js.stream_info(bucket_stream(topo.attempts_bucket))).config.max_age == 30 * 3600.0
    # `legato dev` provisions before its services start, without knowing their setting: it leaves it.
    await provision_streams(js, topo, claim_ttl=None)
    assert (await js.stream_info(bucket_stream(topo.attempts_bucket))).config.max_age == 30 * 3600.0
    assert await claims.horizon() == 3600.0  # read again only after TTL_REFRESH
    claims._ttl_read_at -= 61
    assert await claims.horizon() == 29 * 3600.0
