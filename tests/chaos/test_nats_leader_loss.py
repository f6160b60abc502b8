"""kill -9 of the NATS node that leads Legato's streams, mid-load, in a 3-node JetStream cluster with
3-replica streams: every run still succeeds exactly once, and every step body ran exactly once by its
own log (an executor that could not publish its result must keep it, not hand the work item to another
executor that would report the attempt lost and run the step again)."""

from __future__ import annotations

import asyncio
import collections
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from legato.bus.connection import connect_with
from legato.bus.topology import Topology
from legato.client import ApiError, LegatoClient
from legato.config.settings import Settings
from legato.devstack import NatsCluster
from legato.security.keyring import Keyring
from legato.store.pool import create_pool
from tests.support.stack import Stack, wait_api

# The heaviest chaos test (a 3-node cluster under load, ~1.5 min): `make soak`, not CI.
pytestmark = [pytest.mark.slow, pytest.mark.soak]

RUNS = 300

WORKFLOW = """
id: {wf}
steps:
  - id: body
    type: shell
    command: echo "$LEGATO_INSTANCE_ID $LEGATO_ATTEMPT" >> {log}
    retry: {{platform: 5, backoff: {{type: fixed, initial: 0.2s}}}}
"""


@pytest.fixture
def nats_cluster(keyring: Keyring | None) -> Iterator[NatsCluster]:
    root = Path(tempfile.mkdtemp(prefix="legato-test-cluster-"))
    cluster = NatsCluster(root, users=keyring.users() if keyring else None).start()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


async def start_run(client: LegatoClient, wf: str, request_id: str) -> str:
    """Start a run, retrying the same request id (idempotent) while the cluster fails over."""
    for _ in range(60):
        try:
            started = await client.start(wf, request_id=request_id)
            return str(started.instance_id)
        except (ApiError, TimeoutError, ConnectionError):
            await asyncio.sleep(0.5)
    raise AssertionError(f"run {request_id} could not be started through the failover")


async def final_status(client: LegatoClient, instance_id: str, timeout: float) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    status = "unknown"
    while loop.time() < deadline:
        try:
            status = str((await client.get(instance_id))["status"])
        except (ApiError, TimeoutError, ConnectionError):
            status = "unreachable"
        if status in ("succeeded", "failed", "timed_out", "stopped", "skipped"):
            return status
        await asyncio.sleep(0.5)
    return status


async def new_leader(js: JetStreamContext, stream: str) -> str:
    """The stream's leader once one is elected (the probe's own connection may be failing over too)."""
    for _ in range(60):
        try:
            info = await js.stream_info(stream)
        except (NatsError, TimeoutError):
            info = None
        if info is not None and info.cluster is not None and info.cluster.leader:
            return info.cluster.leader
        await asyncio.sleep(0.5)
    raise AssertionError(f"stream {stream} has no leader 30 s after the node was killed")


def log_lines(log: Path) -> list[tuple[str, int]]:
    if not log.exists():
        return []
    return [(run, int(attempt)) for run, attempt in (line.split() for line in log.read_text().splitlines())]


async def test_killing_the_stream_leader_mid_load_runs_every_step_exactly_once(
    settings: Settings, nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    cluster_settings = msgspec.structs.replace(settings, nats_url=nats_cluster.url, stream_replicas=3)
    wf = f"leader-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "steps.log"
    stack = Stack(
        cluster_settings,
        tmp_path / "stack",
        executors=2,
        concurrency=8,
        extra_env={"LEGATO_STREAM_REPLICAS": "3"},
    )
    stack.start()
    client = await LegatoClient.connect(
        cluster_settings.nats_url, namespace=settings.namespace, actor="test", settings=cluster_settings
    )
    nc = await connect_with(cluster_settings, name="test-leader-probe")
    js = nc.jetstream()
    topology = Topology(namespace=settings.namespace, partitions=settings.partitions)
    try:
        await wait_api(client, timeout=60)
        await client.push(WORKFLOW.format(wf=wf, log=log))

        # Streams are replicated on all three nodes before the load starts.
        for stream in (topology.work_stream, topology.events_stream):
            info = await js.stream_info(stream)
            assert info.config.num_replicas == 3, stream
        starter = asyncio.gather(*(start_run(client, wf, f"r{i}") for i in range(RUNS)))

        async with asyncio.timeout(180):
            while len(log_lines(log)) < RUNS // 4:
                await asyncio.sleep(0.05)
        # The node leading the events stream, where executors publish their results.
        events_leader = (await js.stream_info(topology.events_stream)).cluster
        assert events_leader is not None and events_leader.leader
        victim = nats_cluster.node(events_leader.leader)
        done_before_kill = len(log_lines(log))
        victim.kill()

        instance_ids = await starter
        # The stream really failed over: another node leads it now.
        assert await new_leader(js, topology.events_stream) != victim.server_name
        assert len(set(instance_ids)) == RUNS
        statuses = await asyncio.gather(*(final_status(client, i, timeout=300) for i in instance_ids))
    except BaseException:
        print(stack.logs())
        raise
    finally:
        await nc.close()
        await client.close()
        await asyncio.to_thread(stack.stop)

    assert done_before_kill < RUNS, "the node was killed after the load was over"
    assert collections.Counter(statuses) == {"succeeded": RUNS}, collections.Counter(statuses)
    # What the steps did: each run's body ran exactly once.
    lines = log_lines(log)
    per_run = collections.Counter(run for run, _ in lines)
    assert set(per_run) == set(instance_ids)
    assert [r for r, n in per_run.items() if n != 1] == [], "step bodies ran more than once"
    pool = await create_pool(settings.database_url, min_size=1, max_size=1)
    try:
        rows = await pool.fetch("SELECT instance_id, attempt, status, error FROM step_attempt")
    finally:
        await pool.close()
    # No attempt was given up as lost while its executor lived, and the attempt that ran the body is
    # the one that succeeded. The only other outcome allowed: an executor that lost contact with the
    # JetStream meta leader for longer than its fence (the killed node may have been it) fenced an
    # attempt before its body ran, and the platform retry ran it.
    assert [dict(r) for r in rows if r["status"] == "lost"] == []
    succeeded = {(r["instance_id"], r["attempt"]) for r in rows if r["status"] == "succeeded"}
    assert succeeded == set(lines)
    others = [dict(r) for r in rows if r["status"] != "succeeded"]
    assert all(str(r["error"]).startswith("fenced:") for r in others), others
    print(f"{len(others)} attempts fenced before their body ran (platform retries)")
