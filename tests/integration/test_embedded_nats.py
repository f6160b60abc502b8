"""The embedded nats-server the dev stack, the tests and the benches start."""

from __future__ import annotations

from pathlib import Path

import pytest

from legato.devstack.nats_server import NATS_GOMAXPROCS, EmbeddedNats


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


@pytest.mark.parametrize(("given", "expected"), [(None, str(NATS_GOMAXPROCS)), ("3", "3")])
def test_an_embedded_server_runs_on_one_go_thread_unless_gomaxprocs_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str | None, expected: str
) -> None:
    if given is None:
        monkeypatch.delenv("GOMAXPROCS", raising=False)
    else:
        monkeypatch.setenv("GOMAXPROCS", given)
    server = EmbeddedNats(tmp_path / "nats", preferred_port=0).start()
    try:
        assert server.proc is not None
        assert environ_of(server.proc.pid)["GOMAXPROCS"] == expected
    finally:
        server.stop()
