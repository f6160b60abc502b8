"""Attacks on the bus and the API, against the real stack running under nkey auth and permissions.

Each test is an attack from issue 14: connecting without credentials, a viewer stopping a run, a
forged actor, a replayed request, work published straight to ``legato.work.<queue>``, the executor
calling the API. Every one must be refused — by nats-server, by the trigger, or by the executor.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import msgspec
import nats.errors
import nats.js.errors
import pytest
from nats.js.api import DiscardPolicy

from legato.bus.connection import connect, connect_with, nats_auth_options
from legato.bus.publisher import OutgoingMessage, Publisher, caught_up
from legato.bus.streams import SIGNAL_MAX_BYTES, provision_streams
from legato.bus.topology import Topology
from legato.client import ApiError, LegatoClient
from legato.config.settings import Settings
from legato.devstack import EmbeddedNats
from legato.protocol.messages import WorkItem, encode
from legato.security.keyring import Keyring
from legato.security.keys import Signer
from legato.security.signing import sign_request, sign_signal, sign_work
from tests.support.stack import running_stack, wait_for

pytestmark = pytest.mark.timeout(240)

SLEEPY = """
id: sleepy
steps:
  - id: nap
    type: sleep
    duration: 120s
"""


def as_role(settings: Settings, ring: Keyring, name: str) -> asyncio.Future[LegatoClient]:
    return asyncio.ensure_future(
        LegatoClient.connect(
            settings.nats_url, namespace=settings.namespace, creds=str(ring.seed_file(name)), timeout=20
        )
    )


async def test_connecting_without_credentials_is_refused(settings: Settings, keyring: Keyring) -> None:
    with pytest.raises(ConnectionError, match=r"(?i)authorization"):
        await connect(settings.nats_url, name="stranger", options={})
    with pytest.raises(ConnectionError):
        await LegatoClient.connect(settings.nats_url, creds="")
    # A key nats-server does not know is refused too.
    stray = Keyring(Path(keyring.folder.parent) / f"stray-{uuid.uuid4().hex[:6]}").ensure(
        (("mallory", "admin"),)
    )
    with pytest.raises(ConnectionError):
        await connect(
            settings.nats_url,
            name="mallory",
            options=nats_auth_options(creds=str(stray.seed_file("mallory"))),
        )


async def test_roles_viewer_operator_admin(settings: Settings, keyring: Keyring, tmp_path: Path) -> None:
    async with running_stack(settings, tmp_path) as (_stack, admin):
        await admin.push(SLEEPY)
        run = await admin.start("sleepy", {})
        await wait_for(admin, run.instance_id, statuses=("running",))
        viewer = await as_role(settings, keyring, "viewer")
        operator = await as_role(settings, keyring, "operator")
        try:
            assert (await viewer.get(run.instance_id))["status"] == "running"
            # A viewer's stop: refused by nats-server, reported at once and by name — not a timeout.
            began = time.monotonic()
            with pytest.raises(ApiError) as refused:
                await viewer.call("instance.stop", {"instance_id": run.instance_id, "reason": "test"})
            assert refused.value.code == "permission_denied"
            assert "instance.stop" in refused.value.message
            assert time.monotonic() - began < 10
            # An operator may not push (admin only).
            with pytest.raises(ApiError) as refused:
                await operator.push(SLEEPY.replace("sleepy", "sleepy2"))
            assert refused.value.code == "permission_denied"
            # The trigger checks the role too: a viewer-signed stop smuggled over a root connection.
            smuggled = LegatoClient(
                admin.nc, admin.topology, signer=Signer.from_file(keyring.seed_file("viewer"))
            )
            with pytest.raises(ApiError) as refused:
                await smuggled.call("instance.stop", {"instance_id": run.instance_id, "reason": "test"})
            assert refused.value.code == "permission_denied"
            assert "needs role operator" in refused.value.message
            assert (await viewer.get(run.instance_id))["status"] == "running"
            # The operator's stop is recorded under the operator's proven name.
            await operator.call("instance.stop", {"instance_id": run.instance_id, "reason": "test"})
            info = await wait_for(admin, run.instance_id)
            assert info["status"] == "stopped"
            actors = {t.get("actor") for t in info.get("timeline", []) if t.get("actor")}
            assert "operator" in actors, info.get("timeline")
        finally:
            await viewer.close()
            await operator.close()


async def test_forged_replayed_and_unsigned_requests_are_refused(
    settings: Settings, keyring: Keyring, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path) as (_stack, admin):
        await admin.push(SLEEPY)
        run = await admin.start("sleepy", {})
        operator = await as_role(settings, keyring, "operator")
        try:
            with pytest.raises(ApiError) as refused:
                await operator.call(
                    "instance.stop", {"instance_id": run.instance_id, "reason": "x", "actor": "alice"}
                )
            assert refused.value.code == "forbidden"
            assert "'alice'" in refused.value.message and "'operator'" in refused.value.message
            # Unsigned (root connection, no signer): the trigger does not know who asks.
            anonymous = LegatoClient(admin.nc, admin.topology, actor="admin")
            with pytest.raises(ApiError) as refused:
                await anonymous.call("workflow.list", {})
            assert refused.value.code == "unauthenticated"
            # A captured, validly signed request sent again is refused.
            subject = admin.topology.api_subject("workflow", "list")
            body = msgspec.json.encode({})
            headers = sign_request(Signer.from_file(keyring.seed_file("viewer")), subject, body)
            first = await admin.nc.request(subject, body, headers=headers, timeout=20)
            assert b'"result"' in first.data
            again = await admin.nc.request(subject, body, headers=headers, timeout=20)
            assert b"replayed" in again.data
            # Moved to another subject: the signature no longer matches.
            other = admin.topology.api_subject("instance", "list")
            moved = await admin.nc.request(other, body, headers={**headers, "Legato-Nonce": "00"}, timeout=20)
            assert b"bad request signature" in moved.data
            # Oversized request: a clear error, not a crash.
            with pytest.raises(ApiError) as refused:
                await admin.call("workflow.validate", {"definition": "x" * (7 * 1024 * 1024)})
            assert (
                refused.value.code == "request_too_large"
                and "LEGATO_API_MAX_REQUEST_BYTES" in refused.value.message
            )
            with pytest.raises(ApiError) as refused:  # beyond what NATS carries at all
                await admin.call("workflow.validate", {"definition": "x" * (9 * 1024 * 1024)})
            assert refused.value.code == "request_too_large"
        finally:
            await operator.close()


async def test_executor_and_signal_publisher_cannot_call_the_api(
    settings: Settings, keyring: Keyring
) -> None:
    for name in ("executor", "publisher", "scheduler"):
        client = await as_role(settings, keyring, name)
        try:
            with pytest.raises(ApiError) as refused:
                await client.call("workflow.list", {})
            assert refused.value.code == "permission_denied", name
        finally:
            await client.close()


def hostile_item(topo: Topology, marker: Path) -> WorkItem:
    return WorkItem(
        attempt_id=f"att-{uuid.uuid4().hex[:12]}",
        workflow_id="none",
        instance_id=f"inst-{uuid.uuid4().hex[:8]}",
        step_id="pwn",
        attempt=1,
        step_type="shell",
        config={"command": f"id > {marker}"},
        params={},
        timeout=30,
        reply_subject=topo.event_subject("none"),
        dispatched_at=time.time(),
    )


async def test_raw_work_is_refused_by_the_server_and_never_run(
    settings: Settings, keyring: Keyring, tmp_path: Path
) -> None:
    topo = Topology(settings.namespace, settings.partitions)
    root = await connect_with(settings, name="legato-test")
    await provision_streams(root.jetstream(), topo)
    # 1. Nobody but the scheduler may publish work: nats-server refuses the publish (no PubAck).
    for name in ("executor", "operator", "publisher", "trigger", "signal_router"):
        nc = await connect(
            settings.nats_url, name=name, options=nats_auth_options(creds=str(keyring.seed_file(name)))
        )
        try:
            marker = tmp_path / f"pwned-{name}"
            with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError, TimeoutError)):
                await nc.jetstream().publish(
                    topo.work_subject("default"), encode(hostile_item(topo, marker)), timeout=2
                )
        finally:
            await nc.close()
    assert (await root.jetstream().stream_info(topo.work_stream)).state.messages == 0
    # 2. Injected anyway by a privileged connection: unsigned, and signed with a non-scheduler key.
    unsigned_marker = tmp_path / "pwned-unsigned"
    forged_marker = tmp_path / "pwned-forged"
    unsigned = hostile_item(topo, unsigned_marker)
    forged = hostile_item(topo, forged_marker)
    subject = topo.work_subject("default")
    forged_body = encode(forged)
    pub = Publisher(root)
    await pub.publish(OutgoingMessage(subject, encode(unsigned), msg_id=unsigned.attempt_id))
    await pub.publish(
        OutgoingMessage(
            subject,
            forged_body,
            msg_id=forged.attempt_id,
            headers=sign_work(
                Signer.from_file(keyring.seed_file("operator")), subject, forged.attempt_id, forged_body
            ),
        )
    )
    await root.close()
    async with running_stack(settings, tmp_path) as (_stack, admin):
        conn = await asyncpg.connect(settings.database_url)
        try:
            deadline = time.monotonic() + 60
            rows: list[asyncpg.Record] = []
            while time.monotonic() < deadline:
                rows = await conn.fetch("SELECT msg_id, error FROM dead_letter ORDER BY msg_id")
                if len(rows) >= 2:
                    break
                await asyncio.sleep(0.2)
        finally:
            await conn.close()
        errors = {r["msg_id"]: r["error"] for r in rows}
        assert "no scheduler signature" in errors.get(unsigned.attempt_id, ""), errors
        assert "not a scheduler key" in errors.get(forged.attempt_id, ""), errors
        # Replaying a dead-lettered work item would have the scheduler's relay sign it: refused.
        [dead] = [
            d
            for d in (await admin.call("dead_letter.list", {}))["dead_letters"]
            if d["msg_id"] == forged.attempt_id
        ]
        with pytest.raises(ApiError) as refused:
            await admin.call("dead_letter.replay", {"id": dead["id"], "reason": "try"})
        assert refused.value.code == "not_applicable" and "never replayed" in refused.value.message
        # And a real run still works: the scheduler's own items are signed and run.
        await admin.push(SLEEPY.replace("120s", "0s"))
        run = await admin.start("sleepy", {})
        assert (await wait_for(admin, run.instance_id))["status"] == "succeeded"
    assert not unsigned_marker.exists() and not forged_marker.exists()


async def test_signal_publisher_may_publish_signals_only(settings: Settings, keyring: Keyring) -> None:
    topo = Topology(settings.namespace, settings.partitions)
    root = await connect_with(settings, name="legato-test")
    await provision_streams(root.jetstream(), topo)
    config = (await root.jetstream().stream_info(topo.signals_stream)).config
    assert config.max_bytes == SIGNAL_MAX_BYTES and config.discard == DiscardPolicy.NEW
    await root.close()
    nc = await connect(
        settings.nats_url,
        name="publisher",
        options=nats_auth_options(creds=str(keyring.seed_file("publisher"))),
    )
    try:
        ack = await nc.jetstream().publish(topo.signal_subject("orders.paid"), b'{"params": {}}', timeout=10)
        assert ack.seq >= 1
        # Untrusted input is bounded: an oversized signal is refused by the stream.
        with pytest.raises(nats.js.errors.APIError, match="maximum"):
            await nc.jetstream().publish(topo.signal_subject("orders.paid"), b"x" * (512 * 1024), timeout=10)
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError, TimeoutError)):
            await nc.jetstream().publish(topo.trigger_subject("anything"), b"{}", timeout=2)
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError, TimeoutError)):
            await nc.jetstream().publish(topo.signal_wait_subject, b"{}", timeout=2)
    finally:
        await nc.close()


async def test_services_work_within_their_permissions(
    settings: Settings, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """A normal run (API, scheduler, executor, signal router) is never refused by nats-server: the
    permissions are not merely restrictive but sufficient (e.g. no relay publishes another's rows)."""
    async with running_stack(settings, tmp_path) as (_stack, admin):
        await admin.push(SLEEPY.replace("120s", "0s"))
        runs = [await admin.start("sleepy", {}) for _ in range(5)]
        for run in runs:
            assert (await wait_for(admin, run.instance_id))["status"] == "succeeded"
        await admin.send_signal("nobody.listens", {"x": 1})
        await asyncio.sleep(1.0)
    refused = [
        line
        for line in nats_server.log_path.read_text(errors="replace").splitlines()
        if "Violation" in line and f'"{settings.namespace}.' in line
    ]
    assert refused == []


@pytest.mark.parametrize("service", ["trigger", "scheduler", "executor", "signal_router"])
async def test_a_service_without_credentials_refuses_to_start(settings: Settings, service: str) -> None:
    """Secure by default: no seed and no users file is not an open bus by accident. The service exits
    at once with the variables it misses; LEGATO_INSECURE=1 is the explicit way to run open."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LEGATO_NATS_CREDS", "LEGATO_AUTH_USERS", "LEGATO_INSECURE")
    }
    env |= {"LEGATO_NATS_URL": settings.nats_url, "LEGATO_DATABASE_URL": settings.database_url}
    env |= {"LEGATO_NAMESPACE": settings.namespace, "LEGATO_STATE_DIR": "/nonexistent"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        f"legato.{service}",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 2, err.decode()
    message = err.decode()
    assert "LEGATO_NATS_CREDS and LEGATO_AUTH_USERS not set" in message
    assert "LEGATO_INSECURE=1" in message


async def test_a_signal_publisher_is_recorded_only_as_proven(
    settings: Settings, keyring: Keyring, tmp_path: Path
) -> None:
    """Lineage is part of the audit trail: a raw publisher cannot pose as a run, a step or another
    caller. Claims are believed only under a service's signature; a publisher that signs is recorded
    under its own name; anything unsigned or tampered with has no publisher."""
    topo = Topology(settings.namespace, settings.partitions)
    forged_claims = {
        "Legato-Publisher": "admin",
        "Legato-Publisher-Workflow": "billing",
        "Legato-Publisher-Instance": "run-of-somebody-else",
        "Legato-Publisher-Step": "charge",
    }
    async with running_stack(settings, tmp_path) as (_stack, client):
        nc = await connect(
            settings.nats_url,
            name="publisher",
            options=nats_auth_options(creds=str(keyring.seed_file("publisher"))),
        )
        try:
            js = nc.jetstream()
            subject = topo.signal_subject("orders.paid")
            body = b'{"order": 1}'
            # Unsigned, claiming to be a run's step.
            await js.publish(subject, body, headers={"Nats-Msg-Id": "forged", **forged_claims}, timeout=10)
            # Signed with its own key, still claiming to be admin: recorded under its own name.
            own = Signer.from_file(keyring.seed_file("publisher"))
            headers = {"Nats-Msg-Id": "own", **forged_claims}
            headers |= sign_signal(own, subject, "own", body, headers)
            await js.publish(subject, body, headers=headers, timeout=10)
            # Signed with the trigger's key (a stolen seed aside, a replayed signature), then altered.
            trigger = Signer.from_file(keyring.seed_file("trigger"))
            headers = {"Nats-Msg-Id": "tampered", **forged_claims}
            headers |= sign_signal(trigger, subject, "tampered", body, headers)
            await js.publish(subject, b'{"order": 2}', headers=headers, timeout=10)
        finally:
            await nc.close()
        await client.send_signal("orders.paid", {"order": 3}, signal_id="api")

        async def stored() -> dict[str, dict[str, object]]:
            listed = await client.call("signal.list", {"name": "orders.paid"})
            return {s["id"]: s for s in listed["signals"]}

        deadline = time.monotonic() + 30
        while len(signals := await stored()) < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
    assert set(signals) == {"forged", "own", "tampered", "api"}, signals
    for sig_id in ("forged", "tampered"):
        assert signals[sig_id]["publisher"] is None, signals[sig_id]
        assert signals[sig_id]["publisher_instance"] is None, signals[sig_id]
        assert signals[sig_id]["publisher_step"] is None, signals[sig_id]
    assert signals["own"]["publisher"] == "publisher"
    assert signals["own"]["publisher_instance"] is None
    # Sent through the API: the trigger vouches for its proven caller.
    assert signals["api"]["publisher"] == "test"


async def test_executor_credentials_cannot_change_or_delete_jetstream_state(
    settings: Settings, keyring: Keyring
) -> None:
    """An executor runs other people's code: its seed must not let that code shrink or re-subject the
    work stream, delete the scheduler's consumers, or purge anything. It can still read what it needs."""
    topo = Topology(settings.namespace, settings.partitions)
    root = await connect_with(settings, name="legato-test")
    await provision_streams(root.jetstream(), topo)
    await root.jetstream().add_consumer(
        topo.events_stream, durable_name="victim", ack_policy="explicit", filter_subject=f"{topo.namespace}.>"
    )
    nc = await connect(
        settings.nats_url,
        name="executor",
        options=nats_auth_options(creds=str(keyring.seed_file("executor"))),
    )
    refused = (nats.errors.TimeoutError, nats.errors.NoRespondersError, TimeoutError)
    try:
        js = nc.jetstream(timeout=2)
        work = await js.stream_info(topo.work_stream)  # reading is allowed
        with pytest.raises(refused):
            await js.update_stream(dataclasses.replace(work.config, max_msgs=1))
        with pytest.raises(refused):
            await js.delete_consumer(topo.events_stream, "victim")
        with pytest.raises(refused):
            await js.purge_stream(topo.work_stream)
        with pytest.raises(refused):
            await js.delete_stream(topo.work_stream)
        # Nothing changed.
        after = await root.jetstream().stream_info(topo.work_stream)
        assert after.config.max_msgs == work.config.max_msgs
        assert (await root.jetstream().consumer_info(topo.events_stream, "victim")).name == "victim"
    finally:
        await nc.close()
        await root.close()


async def test_nobody_reads_another_identitys_replies(
    settings: Settings, keyring: Keyring, tmp_path: Path
) -> None:
    """Replies travel on the caller's inbox: each identity may subscribe only to its own
    (``_INBOX.<public key>.>``), so a viewer listening on every inbox hears nothing of the admin's calls,
    while its own calls still get their replies."""
    async with running_stack(settings, tmp_path) as (_stack, _client):
        admin = await as_role(settings, keyring, "admin")
        viewer = await as_role(settings, keyring, "viewer")
        heard: list[bytes] = []
        violations: list[str] = []

        async def note(exc: Exception) -> None:
            violations.append(str(exc))

        nc = await nats.connect(
            settings.nats_url,
            name="eavesdropper",
            error_cb=note,
            **nats_auth_options(creds=str(keyring.seed_file("viewer"))),
        )
        try:

            async def keep(msg: nats.aio.msg.Msg) -> None:
                heard.append(msg.data)

            await nc.subscribe("_INBOX.>", cb=keep)
            await caught_up(nc)
            await admin.push(SLEEPY.replace("120s", "0s"))
            for _ in range(3):
                assert "workflows" in await admin.call("workflow.list", {})
            assert "workflows" in await viewer.call("workflow.list", {})  # its own replies arrive
            await asyncio.sleep(1.0)
        finally:
            await nc.close()
            await admin.close()
            await viewer.close()
    assert heard == []
    assert any("permissions violation for subscription" in v.lower() for v in violations), violations
