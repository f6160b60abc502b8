"""``bench/_batches.py``: the workflow actors' batches over a bench phase, from two scrapes of the
scheduler's ``legato.scheduler.batch.*`` metrics."""

from __future__ import annotations

from tests.support.bench import load_bench_module

batches = load_bench_module("_batches.py")


def exposition(count: int, messages: int, compute: float, write: float, buckets: dict[str, int]) -> str:
    lines = ["# TYPE legato_scheduler_batch_messages histogram"]
    lines += [f'legato_scheduler_batch_messages_bucket{{le="{le}"}} {n}' for le, n in buckets.items()]
    lines += [
        f"legato_scheduler_batch_messages_sum {messages}",
        f"legato_scheduler_batch_messages_count {count}",
    ]
    for phase, total in (("compute", compute), ("write", write)):
        lines += [
            f'legato_scheduler_batch_duration_seconds_bucket{{phase="{phase}",le="+Inf"}} {count}',
            f'legato_scheduler_batch_duration_seconds_sum{{phase="{phase}"}} {total}',
            f'legato_scheduler_batch_duration_seconds_count{{phase="{phase}"}} {count}',
        ]
    # Other metrics of the scheduler are ignored.
    lines.append('legato_consumer_handled_total{result="acked",stream="LEGATO_EVENTS"} 12')
    return "\n".join(lines) + "\n"


def test_two_scrapes_give_the_phase_batches_sizes_times_and_busy() -> None:
    before = batches.parse(exposition(10, 40, 0.010, 0.020, {"1": 2, "16": 10, "128": 10, "+Inf": 10}))
    after = batches.parse(exposition(110, 2040, 0.510, 1.520, {"1": 2, "16": 30, "128": 110, "+Inf": 110}))
    assert (after.batches, after.messages) == (110, 2040)
    assert after.buckets[-1] == (float("inf"), 110)
    # 100 batches in the phase: 20 of at most 16 messages, 80 more of at most 128: the median in (16, 128].
    assert batches.median_bound(before, after) == 128
    first, second = batches.report(before, after, 2.0)
    assert first == "  actor batches: 50/s, 20.0 messages each (median <= 128); busy 1.00 actor-s/s"
    assert second == (
        "    per batch: compute 5.00 ms + write 15.00 ms; per message: compute 250 us + write 750 us"
    )


def test_a_scheduler_without_the_metrics_says_so() -> None:
    empty = batches.parse("# nothing here\nlegato_runs_started_total 3\n")
    assert empty == batches.BatchReading()
    assert batches.report(empty, empty, 1.0, " (x)") == [
        "  actor batches (x): none (a scheduler without legato.scheduler.batch.* metrics?)"
    ]


def test_the_metrics_port_environment_turns_the_sdk_on_for_that_service() -> None:
    env = batches.metrics_env(9464)
    assert env == {
        "LEGATO_METRICS_PORT": "9464",
        "LEGATO_METRICS_HOST": "127.0.0.1",
        "OTEL_SDK_DISABLED": "false",
    }
    assert 0 < batches.free_port() < 65536
    # Without the flag no stack option is passed at all (a checkout from before it has no such argument).
    assert batches.stack_options(False) == (0, {})
    port, options = batches.stack_options(True)
    assert options == {"per_service_env": {"scheduler": batches.metrics_env(port)}} and port > 0
