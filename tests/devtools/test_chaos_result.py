"""The harness's verdicts (pure logic; the scenarios themselves run in test_chaos.py)."""

from __future__ import annotations

from devtools.chaos import MemoryWindow, ScenarioResult, format_memory


def window(**kw) -> MemoryWindow:
    base = dict(label="broker frozen 30 s", before_mb=200.0, during_mb=210.0, after_mb=250.0)
    base.update(allowed_growth_mb=112.0, backlog=60_000, probes=100, backpressure=40)
    base.update(kw)
    return MemoryWindow(**base)


def passing(mode: str = "at-least-once") -> ScenarioResult:
    return ScenarioResult("freeze", mode, produced=1000, bad_sent=1, dead_lettered=1)


def test_growth_is_measured_from_the_rss_at_the_fault_to_the_larger_later_peak() -> None:
    assert window().growth_mb == 50.0
    assert window(during_mb=330.0, after_mb=250.0).growth_mb == 130.0
    assert window(during_mb=312.0).bounded
    assert not window(after_mb=312.5).bounded


def test_memory_beyond_the_bound_or_a_stalled_loop_fails_the_scenario() -> None:
    ok = passing()
    ok.memory.append(window())
    assert ok.passed, ok.failures
    grown = passing()
    grown.memory.append(window(after_mb=400.0))
    assert grown.failures == ["broker frozen 30 s: worker RSS grew 200 MiB (allowed 112)"]
    stalled = passing("exactly-once")
    stalled.memory.append(window(stalled=3))
    assert stalled.failures == ["broker frozen 30 s: 3 probes saw a stalled loop (liveness)"]


def test_other_guarantees_still_decide_alongside_memory() -> None:
    r = passing("exactly-once")
    r.memory.append(window())
    r.duplicates, r.missing = 2, 1
    assert r.failures == ["1 events unanswered", "2 duplicates"]


def test_memory_table_lists_every_window_and_is_empty_without_any() -> None:
    assert format_memory([passing()]) == ""
    r = passing()
    r.memory.append(window())
    r.sessions_peak, r.users = 4_000, 15_000
    lines = format_memory([r]).splitlines()
    assert len(lines) == 3
    assert "broker frozen 30 s" in lines[2] and "60,000" in lines[2] and "40/100" in lines[2]


def test_a_throttle_that_built_no_backlog_fails_the_slow_scenario() -> None:
    r = ScenarioResult("slow", "at-least-once", produced=1000, bad_sent=1, dead_lettered=1)
    r.memory.append(window(label="output throttled 30 s", backlog=300, backlog_before=400))
    assert r.failures == ["output throttled 30 s: no backlog built up (the throttle did not bite)"]
    r.memory[0].backlog = 50_000
    assert r.passed


def test_input_short_of_what_the_feeder_acknowledged_fails_at_once_saying_so():
    import pytest

    from devtools.chaos import _check_input_written

    class Ends:
        def __init__(self, ends):
            self._ends = ends

        def ends(self):
            return self._ends

    _check_input_written(Ends([3000, 3000]), 6000)  # all there
    _check_input_written(Ends([3000, 3010]), 6000)  # re-sent duplicates are fine
    _check_input_written(Ends([]), 6000)  # broker not answering: the wait decides
    with pytest.raises(RuntimeError, match="holds 5,990 records but the feeder had 6,000"):
        _check_input_written(Ends([2990, 3000]), 6000)


def test_suggestions_visible_late_after_a_worker_fault_fail_the_scenario() -> None:
    """Worker faults (kill -9, replacement under a new transactional id, kill -9 of all) are held
    to VISIBLE_BOUND_S until read_committed readers see the suggestions; never seen fails too."""
    from devtools.chaos import VISIBLE_BOUND_S

    ok = passing("exactly-once")
    ok.bounded_visible_s = [12.5, VISIBLE_BOUND_S]
    assert ok.passed, ok.failures
    late = passing("exactly-once")
    late.bounded_visible_s = [12.5, 64.0, float("nan")]
    assert late.failures == ["suggestions visible only [64.0, nan] s after a worker fault"]


def test_a_fault_that_misfired_fails_the_scenario_though_nothing_was_lost() -> None:
    r = passing("exactly-once")
    assert r.passed
    r.misfired.append("replace: no open transaction caught")
    assert r.failures == ["replace: no open transaction caught"]


def test_a_scenario_stopped_by_the_harness_fails_with_the_reason() -> None:
    """run_chaos records a scenario that raised (a wait that timed out, say) as a failure with
    its exception, and goes on with the others."""
    r = ScenarioResult("freeze", "at-least-once", errors=["TimeoutError: backlog not drained"])
    assert r.failures == ["TimeoutError: backlog not drained"]


def test_progress_renews_its_client_when_it_gets_no_answer() -> None:
    """A client that gets no answer past RENEW_AFTER_S is replaced by a fresh one (a librdkafka
    consumer can keep a coordinator lost to a broker fault); the failure stays reported."""
    from devtools.chaos import Progress

    progress = Progress("127.0.0.1:9", "nowhere", "g", 2)  # port 9: nothing listens
    progress.RENEW_AFTER_S = 0.0
    try:
        first = progress._c
        assert progress.ends() == [] and progress.renewed == 0  # the first failure is timed
        assert progress.ends() == []
        assert progress.renewed == 1 and progress._c is not first
        assert progress.last_error
    finally:
        progress.close()


def test_one_question_failing_for_good_renews_the_client_though_the_other_answers() -> None:
    """The CI failure of 2026-12-02: after a broker freeze the end offsets failed for 180 s
    ("Unknown partition", stale metadata) while the committed offsets answered, and each answer
    reset the one renewal timer, so no fresh client was ever tried."""
    from devtools.chaos import Progress

    progress = Progress("127.0.0.1:9", "nowhere", "g", 2)
    progress.RENEW_AFTER_S = 0.0
    try:
        first = progress._c
        progress._failed("ends", RuntimeError("Unknown partition"))
        progress._answered("committed")
        progress._failed("ends", RuntimeError("Unknown partition"))
        assert progress.renewed == 1 and progress._c is not first
    finally:
        progress.close()
