"""The notify stream's configuration: bounded retention from the settings, the install's subjects."""

from __future__ import annotations

from nats.js.api import DiscardPolicy, RetentionPolicy

from legato.bus.streams import NOTIFY_MAX_AGE, NotifyRetention, stream_configs
from legato.bus.topology import Topology


def test_the_notify_stream_is_bounded_and_holds_the_installs_subjects() -> None:
    topo = Topology("acme", 4)
    [default] = [c for c in stream_configs(topo) if c.name == topo.notify_stream]
    assert default.retention == RetentionPolicy.LIMITS and default.discard == DiscardPolicy.OLD
    assert default.max_age == NOTIFY_MAX_AGE and default.max_msgs and default.max_bytes
    assert default.subjects == ["acme.legato.notify.>"]
    keep = NotifyRetention(max_age=3600.0, max_msgs=5000, max_bytes=2 << 20)
    [tuned] = [c for c in stream_configs(topo, notify=keep) if c.name == topo.notify_stream]
    assert (tuned.max_age, tuned.max_msgs, tuned.max_bytes) == (3600.0, 5000, 2 << 20)
    assert topo.notify_run_subject("a.b", "failed") == "acme.legato.notify.run.a~b.failed"
    assert topo.notify_step_subject("wf", "queued") == "acme.legato.notify.step.wf.queued"
    assert topo.notify_filter("run") == "acme.legato.notify.run.*.*"
    assert Topology().notify_filter("step", "wf", "failed") == "legato.notify.step.wf.failed"
