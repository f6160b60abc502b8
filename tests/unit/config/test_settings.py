"""Settings: precedence, and one clear line naming the variable for a bad value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from legato.config.settings import SettingsError, load_settings
from legato.runtime.entry import loop_factory


def test_environment_beats_dev_state_file_and_overrides_beat_environment(tmp_path: Path) -> None:
    (tmp_path / "dev.json").write_text(
        json.dumps({"nats_url": "nats://dev:1", "database_url": "postgresql://dev/x"})
    )
    env = {"LEGATO_STATE_DIR": str(tmp_path), "LEGATO_DATABASE_URL": "postgresql://env/y"}
    s = load_settings(env)
    assert s.nats_url == "nats://dev:1" and s.database_url == "postgresql://env/y"
    s = load_settings(env, overrides={"nats_url": "nats://flag:2"})
    assert s.nats_url == "nats://flag:2"
    assert load_settings({}, use_dev_state=False).nats_url == "nats://127.0.0.1:4222"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LEGATO_PARTITIONS": "abc"}, "LEGATO_PARTITIONS: expected an integer, got 'abc'"),
        ({"LEGATO_PARTITIONS": "0"}, "LEGATO_PARTITIONS: must be 1..4096, got 0"),
        ({"LEGATO_GRACE_PERIOD": "soon"}, "LEGATO_GRACE_PERIOD: expected a number, got 'soon'"),
        ({"LEGATO_NATS_URL": "http://x"}, "LEGATO_NATS_URL: must start with nats://"),
        ({"LEGATO_DATABASE_URL": "mysql://x"}, "LEGATO_DATABASE_URL: must start with postgresql://"),
        ({"LEGATO_NAMESPACE": "a.b"}, "LEGATO_NAMESPACE: must be letters, digits"),
        ({"LEGATO_STREAM_REPLICAS": "2"}, "LEGATO_STREAM_REPLICAS: must be 1, 3 or 5, got 2"),
        ({"LEGATO_NOTIFY_MAX_AGE": "10"}, "LEGATO_NOTIFY_MAX_AGE: must be 60..31622400 seconds, got 10"),
        ({"LEGATO_ATTEMPT_CLAIM_TTL": "1"}, "LEGATO_ATTEMPT_CLAIM_TTL: must be 2..2678400 seconds, got 1"),
        ({"LEGATO_NOTIFY_MAX_MSGS": "5"}, "LEGATO_NOTIFY_MAX_MSGS: must be >= 1000, got 5"),
        ({"LEGATO_NOTIFY_MAX_BYTES": "1"}, "LEGATO_NOTIFY_MAX_BYTES: must be >= 1048576, got 1"),
        ({"LEGATO_EVENT_LOOP": "trio"}, "LEGATO_EVENT_LOOP: must be uvloop or asyncio, got 'trio'"),
        ({"LEGATO_API_MAX_BACKLOG": "-1"}, "LEGATO_API_MAX_BACKLOG: must be >= 0 (0: no limit), got -1"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(env, use_dev_state=False)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_test_hooks_are_settings_off_unless_the_launcher_sets_them() -> None:
    assert not load_settings({}, use_dev_state=False).test_deliver_twice
    assert load_settings({}, use_dev_state=False).test_cron_clock_file == ""
    env = {"LEGATO_TEST_DELIVER_TWICE": "1", "LEGATO_TEST_CRON_CLOCK_FILE": "/tmp/clock"}
    s = load_settings(env, use_dev_state=False)
    assert s.test_deliver_twice and s.test_cron_clock_file == "/tmp/clock"


def test_services_run_on_uvloop_unless_event_loop_is_asyncio() -> None:
    uvloop = pytest.importorskip("uvloop")
    assert load_settings({}, use_dev_state=False).event_loop == "uvloop"
    factory = loop_factory(load_settings({}, use_dev_state=False).event_loop)
    assert factory is not None
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
    assert (
        loop_factory(load_settings({"LEGATO_EVENT_LOOP": "asyncio"}, use_dev_state=False).event_loop) is None
    )
