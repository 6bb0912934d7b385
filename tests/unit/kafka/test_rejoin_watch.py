"""RejoinWatch: a consumer that lost its partitions is wedged only when the broker has answered
throughout ``rejoin_s`` without an assignment coming."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from worker.kafka.watches import RejoinWatch

# One step of a run: seconds that pass, then what happens ("probe" answered or not, "assign").
steps = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=20.0, allow_nan=False),
        st.sampled_from(["answered", "unanswered", "assign", "nothing"]),
    ),
    max_size=40,
)


@given(steps)
def test_wedged_exactly_when_the_broker_answered_every_probe_for_rejoin_s_since_loss(run):
    """Against a model: after the loss at 0, wedged iff no assignment came, and the probes the
    watch asked for have all been answered since a first answered one ``rejoin_s`` ago."""
    watch = RejoinWatch(rejoin_s=30.0, probe_every_s=5.0)
    watch.lost(0.0)
    now, watching, answering_since = 0.0, True, None
    for dt, what in run:
        now += dt
        if what == "assign":
            watch.rejoined()
            watching, answering_since = False, None
        elif what in ("answered", "unanswered") and watch.wants_probe(now):
            assert watching  # it asks only while a loss is pending
            watch.probed(now, what == "answered")
            if what == "unanswered":
                answering_since = None
            elif answering_since is None:
                answering_since = now
        expected = watching and answering_since is not None and now - answering_since >= 30.0
        assert watch.wedged(now) == expected
        assert watch.watching == watching


def test_a_consumer_that_rejoins_is_never_wedged():
    watch = RejoinWatch(rejoin_s=30.0, probe_every_s=5.0)
    watch.lost(0.0)
    watch.probed(0.0, True)
    watch.rejoined()
    assert not watch.watching
    assert not watch.wedged(1000.0)
    assert not watch.wants_probe(1000.0)


def test_a_broker_that_stays_away_is_waited_for_however_long():
    watch = RejoinWatch(rejoin_s=30.0, probe_every_s=5.0)
    watch.lost(0.0)
    t = 0.0
    while t < 600.0:
        assert watch.wants_probe(t)
        watch.probed(t, False)
        assert not watch.wedged(t)
        t += 5.0


def test_wedged_after_rejoin_s_of_answers_and_the_count_restarts_on_silence():
    watch = RejoinWatch(rejoin_s=30.0, probe_every_s=5.0)
    watch.lost(100.0)
    assert watch.wants_probe(100.0)
    watch.probed(110.0, True)
    assert not watch.wants_probe(112.0)
    watch.probed(120.0, False)  # the broker went away again: count from its next answer
    watch.probed(125.0, True)
    assert not watch.wedged(154.9)
    assert watch.wedged(155.0)
    assert watch.waiting_for(155.0) == 55.0
    watch.lost(156.0)  # a second loss does not move the start
    assert watch.waiting_for(156.0) == 56.0
