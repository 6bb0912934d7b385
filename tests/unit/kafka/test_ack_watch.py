"""AckWatch: a broker outage is waited out; a producer stuck while the broker answers is not."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from worker.kafka.watches import AckWatch

QUIET, STUCK, EVERY = 10.0, 10.0, 2.0


def drive(steps, answers):
    """Run a flush-like loop: each step is (seconds elapsed, outputs acknowledged in it); a probe,
    when the watch asks for one, is answered from ``answers`` in turn. Returns the time at which
    the watch called the producer stuck (None if never) and the probes sent."""
    watch = AckWatch(quiet_s=QUIET, stuck_s=STUCK, probe_every_s=EVERY)
    now, outstanding = 0.0, 10**6
    watch.observe(now, outstanding)
    probes: list[tuple[float, bool]] = []
    answers = iter(answers)
    for dt, acked in steps:
        now += dt
        outstanding = max(1, outstanding - acked)
        watch.observe(now, outstanding)
        if watch.wants_probe(now):
            answered = next(answers, True)
            watch.probed(now, answered)
            probes.append((now, answered))
        if watch.stuck(now):
            return now, probes
    return None, probes


steps = st.lists(st.tuples(st.floats(0.1, 3.0), st.integers(0, 5)), min_size=1, max_size=200)


@given(steps, st.lists(st.booleans(), max_size=200))
def test_stuck_only_after_the_broker_answered_for_stuck_s_without_an_ack(steps, answers):
    stuck_at, probes = drive(steps, answers)
    if stuck_at is None:
        return
    # The last acknowledgement came at least quiet + stuck seconds before.
    t, last_ack = 0.0, 0.0
    for dt, acked in steps:
        t += dt
        if t > stuck_at:
            break
        if acked:
            last_ack = t
    assert stuck_at - last_ack >= QUIET + STUCK - 1e-9
    # Every probe in the last ``stuck`` seconds was answered, and the first of that run of
    # answered probes was at least ``stuck`` seconds before.
    run = [p for p in probes if p[0] > last_ack]
    tail = []
    for at, answered in reversed(run):
        if not answered:
            break
        tail.append(at)
    assert tail and stuck_at - min(tail) >= STUCK - 1e-9


@given(st.lists(st.floats(0.1, 3.0), min_size=1, max_size=300))
def test_a_broker_that_never_answers_is_waited_for_forever(dts):
    stuck_at, probes = drive([(dt, 0) for dt in dts], answers=[False] * 10_000)
    assert stuck_at is None
    # Probes start after ``quiet`` seconds and are spaced by at least ``every``.
    assert all(at >= QUIET for at, _ in probes)
    assert all(b[0] - a[0] >= EVERY - 1e-9 for a, b in zip(probes, probes[1:], strict=False))


@given(st.lists(st.floats(0.1, 3.0), min_size=1, max_size=300))
def test_steady_acknowledgements_never_probe(dts):
    stuck_at, probes = drive([(dt, 1) for dt in dts], answers=[])
    assert stuck_at is None and probes == []


def test_a_broker_that_answers_but_never_acks_is_stuck_within_quiet_plus_stuck_plus_a_step():
    stuck_at, probes = drive([(1.0, 0)] * 100, answers=[])
    assert stuck_at is not None
    assert QUIET + STUCK <= stuck_at <= QUIET + STUCK + EVERY + 1.0
    assert probes[0][0] == QUIET


def test_one_unanswered_probe_restarts_the_count():
    # Answered, answered, unanswered (the broker froze again), then answered from then on.
    stuck_at, probes = drive([(1.0, 0)] * 100, answers=[True, True, False])
    unanswered = next(at for at, ok in probes if not ok)
    assert stuck_at is not None and stuck_at - (unanswered + EVERY) >= STUCK


def test_nothing_outstanding_is_never_stuck():
    watch = AckWatch(quiet_s=QUIET, stuck_s=STUCK, probe_every_s=EVERY)
    watch.observe(0.0, 0)
    assert not watch.wants_probe(100.0)
    watch.probed(100.0, True)
    assert not watch.stuck(1000.0)
