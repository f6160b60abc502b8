"""The executor's memory is bounded: output tails, remembered results, remembered cancels."""

from __future__ import annotations

from legato.executor.capture import CapturedOutput, TailBuffer
from legato.executor.recent_attempts import RecentCancels, RecentResults


def test_tail_buffer_keeps_only_the_last_bytes_and_counts_all() -> None:
    buf = TailBuffer(10)
    for chunk in (b"0123", b"456789", b"abc", b"x" * 3):
        buf.write(chunk)
    assert buf.text() == "6789abcxxx"
    assert buf.total == 16 and buf.truncated
    buf.write(b"Y" * 50)
    assert buf.text() == "Y" * 10
    assert buf.text(limit=3) == "YYY"


def test_tail_buffer_cut_inside_a_utf8_character_decodes_with_a_replacement() -> None:
    buf = TailBuffer(3)
    buf.write("é€".encode())  # 2 + 3 bytes; the tail keeps only the euro sign
    assert buf.text() == "€"
    buf = TailBuffer(4)
    buf.write("é€".encode())
    assert buf.text() == "\ufffd€"


def test_captured_output_interleaves_streams_for_the_log_tail() -> None:
    out = CapturedOutput(stream_tail=100, log_tail=8)
    assert out.log_tail() is None
    out.stdout.write(b"out\n")
    out.combined.write(b"out\n")
    out.stderr.write(b"err\n")
    out.combined.write(b"err\n")
    assert out.log_tail() == "out\nerr\n"
    assert out.stderr_tail() == "err"


def test_recent_results_evict_least_recently_used_by_count_and_bytes() -> None:
    results = RecentResults(max_entries=3, max_bytes=100)
    for key in "abc":
        results.put(key, b"x" * 10)
    assert results.get("a") == b"x" * 10  # a is now the most recent
    results.put("d", b"y" * 10)
    assert results.get("b") is None and len(results) == 3
    results.put("e", b"z" * 90)  # over the byte budget: the oldest go until it fits
    assert results.size_bytes <= 100
    assert results.get("e") == b"z" * 90
    assert results.get("c") is None
    results.put("e", b"small")
    assert results.size_bytes == sum(len(results.get(k) or b"") for k in ("a", "d", "e"))


def test_recent_cancels_are_bounded_by_count_and_forgotten_after_max_age() -> None:
    now = [0.0]
    cancels = RecentCancels(max_entries=2, max_age=10.0, clock=lambda: now[0])
    cancels.add("a", "r1")
    cancels.add("b", "")
    assert cancels.reason_for("a") == "r1"
    assert cancels.reason_for("b") == ""  # cancelled without a reason is still cancelled
    cancels.add("c", "r3")
    assert cancels.reason_for("a") is None and len(cancels) == 2
    now[0] = 11.0
    assert cancels.reason_for("b") is None and cancels.reason_for("c") is None
    assert len(cancels) == 0
