"""Client messages that repeat on every reconnect attempt go out once per window, with a count,
instead of flooding the log while a broker is down."""

from __future__ import annotations

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from worker.kafka import clients
from worker.kafka.clients import _error_cb, _LibrdkafkaLog
from worker.ops.logging import RepeatFilter


class _Err:
    def __init__(self, name: str) -> None:
        self._name = name

    def name(self) -> str:
        return self._name

    def fatal(self) -> bool:
        return False


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = _Clock()
    monkeypatch.setattr(clients.time, "monotonic", c.monotonic)
    return c


def test_a_refused_connection_every_50_ms_for_8_s_is_logged_once(clock):
    with capture_logs() as logs:
        sink = _LibrdkafkaLog(structlog.get_logger())
        on_error = _error_cb(structlog.get_logger())
        for i in range(160):
            clock.now = 1000.0 + i * 0.05
            sink.log(
                3,
                "",
                "FAIL",
                "rdkafka#consumer-1",
                f"127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: "
                f"Connection refused (after {i % 3}ms in state CONNECT)",
            )
            on_error(_Err("_TRANSPORT"))
    assert [r["event"] for r in logs] == ["librdkafka", "kafka_client_error"]


def test_the_next_line_after_the_window_carries_the_count(clock):
    with capture_logs() as logs:
        on_error = _error_cb(structlog.get_logger())
        for i in range(25):  # 0 .. 12 s, one every 0.5 s
            clock.now = 1000.0 + i * 0.5
            on_error(_Err("_ALL_BROKERS_DOWN"))
    assert [r.get("repeated", 0) for r in logs] == [0, 19, 4][: len(logs)]
    assert len(logs) == 2  # at 0 s, and at 10 s with the 19 held back in between


def test_different_kinds_are_not_held_back_by_each_other(clock):
    with capture_logs() as logs:
        on_error = _error_cb(structlog.get_logger())
        on_error(_Err("_TRANSPORT"))
        on_error(_Err("_ALL_BROKERS_DOWN"))
        on_error(_Err("_TRANSPORT"))
    assert [r["error"] for r in logs] == ["_TRANSPORT", "_ALL_BROKERS_DOWN"]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(min_value=0, max_value=4), st.sampled_from(["a", "b1", "b22"])),
        max_size=60,
    )
)
def test_nothing_is_lost_every_line_is_either_let_through_or_counted_on_a_later_one(steps):
    """Per kind: lines let through + counts they carry + lines still held == lines offered, and
    two let-through lines of a kind are at least a window apart."""
    repeats = RepeatFilter(window_s=10.0)
    now = 0.0
    offered: dict[str, int] = {}
    reported: dict[str, int] = {}
    last_out: dict[str, float] = {}
    for gap, key in steps:
        now += gap
        kind = "a" if key == "a" else "b#"  # digits do not make a new kind
        offered[kind] = offered.get(kind, 0) + 1
        held_before = repeats.allow(key, now)
        if held_before is not None:
            if kind in last_out:
                assert now - last_out[kind] >= 10.0
            last_out[kind] = now
            reported[kind] = reported.get(kind, 0) + 1 + held_before
    for kind, n in offered.items():
        still_held = repeats._held.get(kind, 0)
        assert reported.get(kind, 0) + still_held == n
