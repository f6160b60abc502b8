"""``write_out``: a publisher's batch goes to the socket when it is queued, not on nats-py's flusher
task's turn, after a quiet spell and while the socket keeps up; otherwise the flusher (which coalesces
a loop iteration's publishes and waits for the socket) writes as before. Against a real nats-server
of the test's own (stopped with SIGSTOP to back the socket up)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from legato.bus import publisher as publisher_module
from legato.bus.connection import connect
from legato.bus.publisher import QUIET, OutgoingMessage, Publisher, caught_up, write_out
from legato.devstack import EmbeddedNats
from tests.support.stack import now, until


@pytest.fixture
async def own_nc(own_nats: EmbeddedNats) -> AsyncIterator[Client]:
    client = await connect(own_nats.url, name="test-write-out")
    yield client
    await client.close()


async def _received(nc: Client, subject: str) -> list[Msg]:
    got: list[Msg] = []

    async def keep(msg: Msg) -> None:
        got.append(msg)

    await nc.subscribe(subject, cb=keep)
    await caught_up(nc)
    return got


async def test_a_queued_publish_is_written_at_once_and_arrives_once(
    own_nats: EmbeddedNats, own_nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = await connect(own_nats.url, name="test-write-out-reader")
    try:
        got = await _received(reader, "wo.once")
        await own_nc.publish("wo.once", b"1")
        # nats-py queues it for its flusher task; if a nats-py version changes that queue, write_out
        # silently falls back to the flusher and this says so.
        assert own_nc._pending, "nats-py no longer queues publishes in Client._pending: review write_out"
        write_out(own_nc)
        assert not own_nc._pending and own_nc._pending_data_size == 0
        # Within QUIET of that write the next publish is left to the flusher, which coalesces. (QUIET is
        # stretched so that a loaded machine pausing this test between two lines cannot end the spell.)
        monkeypatch.setattr(publisher_module, "QUIET", 3600.0)
        await own_nc.publish("wo.once", b"2")
        write_out(own_nc)
        assert own_nc._pending
        await until(now(lambda: not own_nc._pending), 10.0, "the flusher's turn")
        monkeypatch.setattr(publisher_module, "QUIET", 0.0)  # the spell is over
        await own_nc.publish("wo.once", b"3")
        write_out(own_nc)  # quiet again: at once
        assert not own_nc._pending
        await until(
            now(lambda: len(got) >= 3),
            10.0,
            lambda: f"the three messages; arrived: {[m.data for m in got]}, still queued: {own_nc._pending}",
        )
        await own_nc.flush()
        await reader.flush()
        assert [m.data for m in got] == [b"1", b"2", b"3"]
    finally:
        await reader.close()


def _wire(nc: Client, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """What ``nc`` hands its socket, in order (the writes still go through)."""
    transport = nc._transport._io_writer.transport
    wire: list[bytes] = []
    inside: list[bool] = []  # asyncio's writelines may call write: count its lines once
    write, writelines = transport.write, transport.writelines

    def spy_write(data: bytes) -> None:
        if not inside:
            wire.append(bytes(data))
        write(data)

    def spy_writelines(lines: list[bytes]) -> None:
        wire.extend(bytes(line) for line in lines)
        inside.append(True)
        try:
            writelines(lines)
        finally:
            inside.pop()

    monkeypatch.setattr(transport, "write", spy_write)
    monkeypatch.setattr(transport, "writelines", spy_writelines)
    return wire


async def test_caught_up_sends_its_ping_behind_the_subscription_so_nothing_published_after_is_missed(
    own_nats: EmbeddedNats, own_nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nats-py's ``flush()`` writes its PING straight to the socket, ahead of a SUB still queued for its
    flusher: a server reading the PING alone answers before it has the subscription. ``caught_up``
    writes the queue first, so the PONG it waits for means the server holds the SUB."""
    reader = await connect(own_nats.url, name="test-write-out-reader")
    try:
        await asyncio.sleep(QUIET * 2)
        wire = _wire(reader, monkeypatch)
        got: list[Msg] = []

        async def keep(msg: Msg) -> None:
            got.append(msg)

        await reader.subscribe("wo.caught", cb=keep)
        assert not wire, "the SUB is queued for the flusher, not written yet"
        await caught_up(reader)
        sub = next(i for i, b in enumerate(wire) if b.startswith(b"SUB wo.caught"))
        ping = next(i for i, b in enumerate(wire) if b == b"PING\r\n")
        assert sub < ping, f"the PING went out ahead of the SUB: {wire}"
        for i in range(3):
            await own_nc.publish("wo.caught", str(i).encode())
        await caught_up(own_nc)
        await until(now(lambda: len(got) >= 3), 10.0, lambda: f"three messages; arrived {len(got)}")
        assert [m.data for m in got] == [b"0", b"1", b"2"]
    finally:
        await reader.close()


async def test_a_publisher_round_does_not_wait_for_the_flusher(own_nc: Client) -> None:
    """With nats-py's flusher task starved (its queue swapped for one nobody reads), a JetStream round
    still reaches the server and gets its PubAcks: the Publisher wrote it itself."""
    js = own_nc.jetstream()
    await js.add_stream(name="WO", subjects=["wo.js.>"])
    publisher = Publisher(own_nc, timeout=2.0, attempts=1, write_through=True)
    await publisher.publish(OutgoingMessage("wo.js.warm", b"0", msg_id="warm"))  # opens its reply inbox
    await asyncio.sleep(QUIET * 2)
    starved = own_nc._flush_queue
    own_nc._flush_queue = asyncio.Queue()
    try:
        acks = await publisher.publish_many(
            [OutgoingMessage(f"wo.js.{i}", str(i).encode(), msg_id=f"m{i}") for i in range(20)]
        )
    finally:
        own_nc._flush_queue = starved
    assert [a.seq for a in acks if a is not None] == list(range(2, 22))
    info = await js.stream_info("WO")
    assert info.state.messages == 21


async def test_a_backed_up_socket_is_left_to_the_flusher_and_nothing_is_lost_or_reordered(
    own_nats: EmbeddedNats, own_nc: Client
) -> None:
    reader = await connect(own_nats.url, name="test-write-out-reader")
    got = await _received(reader, "wo.slow")
    payload = b"x" * (256 * 1024)
    sent = 0
    transport = own_nc._transport._io_writer.transport
    own_nats.proc.send_signal(signal.SIGSTOP)
    try:
        # The server reads nothing: the kernel's buffers fill, then the transport's own.
        while transport.get_write_buffer_size() == 0 and sent < 400:
            await own_nc.publish("wo.slow", sent.to_bytes(4, "big") + payload)
            write_out(own_nc)
            sent += 1
        assert transport.get_write_buffer_size() > 0, "the socket never backed up"
        await asyncio.sleep(QUIET * 2)  # quiet: only the backed-up socket can hold the next one back
        await own_nc.publish("wo.slow", sent.to_bytes(4, "big") + payload)
        sent += 1
        queued = own_nc._pending_data_size
        write_out(own_nc)
        # Left queued: the flusher writes it once the socket drains (backpressure is kept).
        assert own_nc._pending_data_size == queued > 0
    finally:
        own_nats.proc.send_signal(signal.SIGCONT)
    try:
        await own_nc.flush(timeout=30)
        await until(now(lambda: len(got) >= sent), 30.0, f"all {sent} messages")
        await reader.flush()
        assert [int.from_bytes(m.data[:4], "big") for m in got] == list(range(sent))
    finally:
        await reader.close()
