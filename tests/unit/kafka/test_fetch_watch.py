"""FetchWatch: which assigned partitions librdkafka has stopped fetching, from its statistics."""

from __future__ import annotations

import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.kafka.watches import FetchWatch

STATES = ["active", "offset-query", "offset-wait", "none", "stopped", "validate-epoch-wait"]


def stats(partitions: dict[int, tuple[bool, str]], topic: str = "events") -> dict:
    """A librdkafka statistics object with the given {partition: (desired, fetch_state)}, plus
    the internal unassigned partition -1 that every topic carries."""
    parts = {
        str(n): {"partition": n, "desired": desired, "fetch_state": state}
        for n, (desired, state) in partitions.items()
    }
    parts["-1"] = {"partition": -1, "desired": False, "fetch_state": "none"}
    return {"topics": {topic: {"topic": topic, "partitions": parts}}}


def test_a_partition_stuck_in_offset_query_is_stalled_after_the_threshold_only():
    watch = FetchWatch(stall_after_s=60)
    stuck = stats({0: (True, "active"), 1: (True, "offset-query")})
    assert watch.observe(stuck, now=100.0) == []
    assert watch.observe(stuck, now=159.0) == []
    assert watch.observe(stuck, now=160.0) == [("events", 1)]
    assert watch.states == {("events", 1): "offset-query"}


def test_fetching_again_resets_the_clock():
    watch = FetchWatch(stall_after_s=60)
    watch.observe(stats({1: (True, "offset-wait")}), now=0.0)
    watch.observe(stats({1: (True, "active")}), now=30.0)
    assert watch.observe(stats({1: (True, "offset-wait")}), now=70.0) == []
    assert watch.observe(stats({1: (True, "offset-wait")}), now=130.0) == [("events", 1)]


def test_partitions_not_held_by_the_application_are_ignored():
    watch = FetchWatch(stall_after_s=1)
    idle = stats({2: (False, "none"), 3: (False, "stopped")})
    watch.observe(idle, now=0.0)
    assert watch.observe(idle, now=100.0) == []


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=30),  # seconds since the previous statistics
            st.dictionaries(
                st.integers(0, 5), st.tuples(st.booleans(), st.sampled_from(STATES)), max_size=6
            ),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_stalled_means_held_and_not_active_in_every_sample_of_the_last_threshold(samples):
    """Against a brute-force reading of the sample history: a partition is reported exactly
    when it was held and not active in every sample since some sample at least stall_after_s
    old, up to and including the current one."""
    watch = FetchWatch(stall_after_s=45)
    history: list[tuple[float, dict[int, tuple[bool, str]]]] = []
    now = 0.0
    for gap, parts in samples:
        now += gap
        history.append((now, parts))
        got = watch.observe(stats(parts), now)
        expected = []
        for n in range(6):
            start = None  # time of the earliest sample of the current not-fetching run
            for t, seen in reversed(history):
                desired, state = seen.get(n, (False, "none"))
                if desired and state != "active":
                    start = t
                else:
                    break
            if start is not None and now - start >= 45:
                expected.append(("events", n))
        assert got == expected


def test_update_reports_a_stall_once_on_the_log_and_clears_health_when_fetching_again(monkeypatch):
    from structlog.testing import capture_logs

    import worker.kafka.watches as watches
    from worker.ops.health import Health

    class Gauge:
        value = -1

        def set(self, v):
            self.value = v

    clock = {"now": 0.0}
    monkeypatch.setattr(watches.time, "monotonic", lambda: clock["now"])
    watch, health, gauge = FetchWatch(stall_after_s=60), Health(), Gauge()
    stuck = stats({4: (True, "offset-query")})
    with capture_logs() as logs:
        for t in (0.0, 30.0, 60.0, 65.0, 70.0):
            clock["now"] = t
            health.beat()
            watch.update(stuck, health, gauge, structlog.get_logger())
        assert health.fetch_stalled == 1 and gauge.value == 1 and not health.live()[0]
        clock["now"] = 75.0
        health.beat()
        watch.update(stats({4: (True, "active")}), health, gauge, structlog.get_logger())
    assert health.fetch_stalled == 0 and gauge.value == 0 and health.live()[0]
    stalled = [r for r in logs if r["event"] == "fetch_stalled"]
    assert len(stalled) == 1
    assert stalled[0]["partitions"] == ["events/4"] and stalled[0]["fetch_states"] == [
        "offset-query"
    ]
