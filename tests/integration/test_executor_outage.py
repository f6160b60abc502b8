"""An executor that cannot publish a result keeps it and keeps the work item, against a NATS of its own
that goes away: the events stream vanishes, then the whole server is stopped and restarted. The step
runs once, its result lands once, and no other executor ever gets the item to report it lost."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import nats.errors

from legato.bus import OutgoingMessage, Topology, provision_streams
from legato.bus.connection import connect
from legato.config.settings import Settings
from legato.devstack import EmbeddedNats
from legato.executor import ExecutorOptions, ExecutorService
from legato.protocol import AttemptFinished, WorkItem, decode_event, encode
from legato.runtime.host import ServiceHost
from tests.support.auth import scheduler_publisher

ACK_WAIT = 10.0


@asynccontextmanager
async def executor(
    settings: Settings, executor_id: str, ack_wait: float = ACK_WAIT
) -> AsyncIterator[ExecutorService]:
    options = ExecutorOptions(
        queue="default", concurrency=2, executor_id=executor_id, ack_wait=ack_wait, kill_grace=1.0
    )
    async with ServiceHost(
        "executor", settings, with_relay=False, configure_process=False, with_database=False
    ) as host:
        service = ExecutorService.on_host(host, options)
        host.add(service)
        task = asyncio.create_task(host.run(handle_signals=False))
        async with asyncio.timeout(15):
            await service.ready.wait()
        try:
            yield service
        finally:
            host.request_shutdown()
            await asyncio.wait_for(task, timeout=30)


async def wait_file(path: Path, text: str, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not (path.exists() and text in path.read_text()):
            await asyncio.sleep(0.05)


async def test_unpublishable_result_is_retried_while_the_item_is_kept_not_given_to_another_executor(
    settings: Settings, own_nats: EmbeddedNats, tmp_path: Path
) -> None:
    settings = msgspec.structs.replace(settings, nats_url=own_nats.url)
    topo = Topology(settings.namespace, settings.partitions)
    log = tmp_path / "step.log"
    item = WorkItem(
        attempt_id=f"att-{uuid.uuid4().hex[:12]}",
        workflow_id="wf-outage",
        instance_id=f"inst-{uuid.uuid4().hex[:8]}",
        step_id="body",
        attempt=1,
        step_type="shell",
        config={"command": f"echo run >> {log}; sleep 1.5; echo end >> {log}"},
        params={},
        timeout=None,
        reply_subject=topo.event_subject("wf-outage"),
        dispatched_at=time.time(),
    )
    nc = await connect(own_nats.url, name="test-outage")
    js = nc.jetstream()
    # A stateful service creates the streams and the attempts bucket; executors only wait for them.
    await provision_streams(js, topo)
    try:
        async with executor(settings, "exec-a") as a, executor(settings, "exec-b") as b:
            await scheduler_publisher(nc, topo).publish(
                OutgoingMessage(topo.work_subject("default"), encode(item))
            )
            await wait_file(log, "run")
            # The events stream vanishes while the step runs: its result has nowhere to go.
            await js.delete_stream(topo.events_stream)
            await wait_file(log, "end")
            await asyncio.sleep(3.0)
            # Then NATS itself goes away for a while, and comes back (same port, same store).
            own_nats.stop()
            await asyncio.sleep(3.0)
            own_nats.start()
            await asyncio.sleep(4.0)
            ran = a if a.attempts.stats["executed"] else b
            failures_in_outage = ran.attempts.stats["result_publish_failures"]
            # The stream is back: the kept result lands.
            await provision_streams(js, topo)
            async with asyncio.timeout(30):
                while ran.attempts.running:
                    await asyncio.sleep(0.05)
            info = await js.consumer_info(topo.work_stream, topo.consumer_name("executor_default"))
            stats = a.attempts.stats + b.attempts.stats
    finally:
        await nc.close()
    nc = await connect(own_nats.url, name="test-outage-read")
    try:
        sub = await nc.jetstream().pull_subscribe(
            f"{topo.subject_prefix('event')}>", stream=topo.events_stream
        )
        events = []
        try:
            events = [decode_event(m.data) for m in await sub.fetch(10, timeout=2.0)]
        except (nats.errors.TimeoutError, TimeoutError):
            pass
    finally:
        await nc.close()
    finished = [e for e in events if isinstance(e, AttemptFinished)]
    assert len(finished) == 1, events
    assert finished[0].outcome == "succeeded" and finished[0].executor == ran.executor_id
    # Ran once, never given back (no nak, no redelivery), never reported lost by the other executor.
    assert log.read_text().splitlines() == ["run", "end"]
    assert stats["executed"] == 1 and stats["lost"] == 0 and stats["republished"] == 0, stats
    assert info.num_redelivered == 0 and info.num_ack_pending == 0 and info.num_pending == 0
    assert failures_in_outage >= 3  # the outage was real: it was retried, not just slow


def ticks(path: Path) -> list[float]:
    return [float(x) for x in path.read_text().split()] if path.exists() else []


async def test_a_step_is_stopped_before_its_item_can_be_redelivered_when_its_executor_is_cut_off(
    settings: Settings, own_nats: EmbeddedNats, tmp_path: Path
) -> None:
    settings = msgspec.structs.replace(settings, nats_url=own_nats.url)
    topo = Topology(settings.namespace, settings.partitions)
    log = tmp_path / "ticks.log"
    ack_wait = 10.0
    item = WorkItem(
        attempt_id=f"att-{uuid.uuid4().hex[:12]}",
        workflow_id="wf-cut",
        instance_id=f"inst-{uuid.uuid4().hex[:8]}",
        step_id="body",
        attempt=1,
        step_type="shell",
        config={"command": f"while true; do date +%s.%N >> {log}; sleep 0.1; done"},
        params={},
        timeout=None,
        reply_subject=topo.event_subject("wf-cut"),
        dispatched_at=time.time(),
    )
    nc = await connect(own_nats.url, name="test-cut")
    await provision_streams(nc.jetstream(), topo)
    try:
        async with executor(settings, "exec-cut", ack_wait=ack_wait) as ex:
            await scheduler_publisher(nc, topo).publish(
                OutgoingMessage(topo.work_subject("default"), encode(item))
            )
            async with asyncio.timeout(20):
                while len(ticks(log)) < 5:
                    await asyncio.sleep(0.05)
            assert own_nats.proc is not None
            # The server freezes: the executor is alive but cut off, its heartbeats go nowhere. When the
            # server wakes up, the ack wait has passed and the item would be redelivered at once.
            own_nats.proc.send_signal(signal.SIGSTOP)
            frozen_at = time.time()
            try:
                await asyncio.sleep(ack_wait + 1.0)
                woke_at = time.time()
            finally:
                own_nats.proc.send_signal(signal.SIGCONT)
            async with asyncio.timeout(30):
                while ex.attempts.running:
                    await asyncio.sleep(0.05)
            stats = dict(ex.attempts.stats)
    finally:
        await nc.close()
    last_tick = max(ticks(log))
    # Stopped while cut off, before the item could go anywhere else: no retry can overlap it.
    assert frozen_at < last_tick < frozen_at + ack_wait / 2, last_tick - frozen_at
    assert last_tick < woke_at
    assert stats["fenced"] == 1 and stats["executed"] == 1, stats
