"""Input drift (worker.core.drift): PSI, the reference profile and the rolling window."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core.drift import (
    EPSILON,
    PSI_SIGNIFICANT,
    QUANTITIES,
    DriftTracker,
    ReferenceProfile,
    build_reference,
    crossings,
    numeric_reference,
    psi,
)
from worker.core.features import N_FEATURES

proportions = st.lists(
    st.floats(min_value=0.0, max_value=1.0, allow_nan=False), min_size=2, max_size=12
).filter(lambda p: sum(p) > 0)


@given(proportions)
def test_psi_of_identical_distributions_is_zero(p: list[float]) -> None:
    assert psi(np.asarray(p), np.asarray(p)) == pytest.approx(0.0, abs=1e-12)
    # counts and proportions are the same thing
    assert psi(np.asarray(p), 7 * np.asarray(p)) == pytest.approx(0.0, abs=1e-12)


@given(st.data())
def test_psi_is_non_negative_and_symmetric(data: st.DataObject) -> None:
    e = data.draw(proportions)
    o = data.draw(
        st.lists(
            st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
            min_size=len(e),
            max_size=len(e),
        ).filter(lambda p: sum(p) > 0)
    )
    forward = psi(np.asarray(e), np.asarray(o))
    assert forward >= -1e-12
    # J-divergence: swapping the roles of expected and observed changes nothing
    assert psi(np.asarray(o), np.asarray(e)) == pytest.approx(forward, rel=1e-9, abs=1e-12)


@given(st.floats(min_value=0.05, max_value=0.95), st.floats(min_value=0.0, max_value=0.04))
def test_psi_grows_with_the_shift(base: float, step: float) -> None:
    """Moving mass from one bin to the other further away from the expected split never
    lowers the PSI."""
    expected = np.asarray([base, 1 - base])
    values = [
        psi(expected, np.asarray([base - d, 1 - base + d]))
        for d in np.arange(0.0, base, max(step, 0.01))
    ]
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:], strict=False))


def test_psi_floors_empty_bins() -> None:
    value = psi(np.asarray([1.0, 0.0]), np.asarray([0.5, 0.5]))
    assert np.isfinite(value)
    assert value == pytest.approx(
        (0.5 - 1.0) * np.log(0.5 / 1.0) + (0.5 - EPSILON) * np.log(0.5 / EPSILON), rel=1e-3
    )


def test_numeric_reference_bins_at_quantiles_and_merges_ties() -> None:
    rng = np.random.default_rng(0)
    continuous = numeric_reference(rng.normal(size=10_000))
    assert continuous.n_bins == 10
    np.testing.assert_allclose(continuous.expected, 0.1, atol=1e-3)
    binary = numeric_reference(np.r_[np.zeros(900), np.ones(100)])
    assert binary.edges is not None
    assert binary.edges.tolist() == [0.0]  # one bin per value
    np.testing.assert_allclose(binary.expected, [0.9, 0.1])
    assert binary.bins(np.asarray([0.0, 1.0, -1.0, 2.0])).tolist() == [0, 1, 0, 1]


def _reference(seed: int = 0, n: int = 4000) -> ReferenceProfile:
    rng = np.random.default_rng(seed)
    return build_reference(
        rng.choice(3, n, p=[0.9, 0.07, 0.03]),
        rng.random(n) < 0.02,
        np.zeros(n, dtype=bool),
        rng.integers(1, 30, n),
        rng.gamma(2.0, 1.0, (n, N_FEATURES)).astype(np.float32),
    )


def _per_event(rng: np.random.Generator, n: int, cart_share: float = 0.07) -> dict[str, np.ndarray]:
    return {
        "event_type": rng.choice(3, n, p=[0.97 - cart_share, cart_share, 0.03]),
        "unknown_product": (rng.random(n) < 0.02).astype(np.int64),
        "unknown_category": np.zeros(n, dtype=np.int64),
        "session_length": rng.integers(1, 30, n),
    }


def test_reference_round_trips_through_json() -> None:
    reference = _reference()
    text = json.dumps(reference.to_json())
    back = ReferenceProfile.from_json(json.loads(text))
    assert set(back.quantities) == set(QUANTITIES)
    for name, q in reference.quantities.items():
        r = back.quantities[name]
        np.testing.assert_allclose(r.expected, q.expected, atol=1e-7)
        assert (r.edges is None) == (q.edges is None)
        if q.edges is not None:
            assert r.edges is not None
            assert r.edges.tolist() == q.edges.tolist()
        assert r.floor == q.floor
    with pytest.raises(ValueError):
        ReferenceProfile.from_json({**reference.to_json(), "format": 99})


def test_tracker_matches_the_reference_and_sees_a_shift() -> None:
    rng = np.random.default_rng(1)
    reference = _reference()
    same = DriftTracker(reference, min_events=1000)
    shifted = DriftTracker(reference, min_events=1000)
    for _ in range(10):
        rows = rng.gamma(2.0, 1.0, (256, N_FEATURES)).astype(np.float32)
        same.observe_values(_per_event(rng, 500), rows)
        shifted.observe_values(_per_event(rng, 500, cart_share=0.3), rows * 1.5)
    assert max(same.psi().values()) < 0.05
    drifted = shifted.psi()
    assert drifted["event_type"] > PSI_SIGNIFICANT
    assert min(drifted[name] for name in ("cand_log_pop", "sess_events")) > PSI_SIGNIFICANT
    assert drifted["unknown_product"] < 0.05


def test_tracker_reports_nothing_before_min_events() -> None:
    tracker = DriftTracker(_reference(), min_events=1000)
    tracker.observe_values(_per_event(np.random.default_rng(0), 999))
    assert tracker.psi() == {}
    tracker.observe_values(_per_event(np.random.default_rng(1), 1))
    assert set(tracker.psi()) == {
        "event_type",
        "unknown_product",
        "unknown_category",
        "session_length",
    }


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.floats(min_value=0, max_value=400), st.integers(1, 50)), max_size=30),
    st.floats(min_value=10, max_value=120),
)
def test_rolling_window_holds_only_recent_observations(
    steps: list[tuple[float, int]], bucket_s: float
) -> None:
    """After advancing to ``now``, the window holds exactly the events observed in the buckets
    of the last ``window_s``: old observations leave it."""
    window_s = 4 * bucket_s
    tracker = DriftTracker(_reference(n=500), window_s=window_s, bucket_s=bucket_s, min_events=0)
    now = 0.0
    observed: list[tuple[int, int]] = []  # (bucket, events)
    tracker.advance(now)
    for gap, n in steps:
        now += gap
        tracker.advance(now)
        tracker.observe_values({"event_type": np.zeros(n, dtype=np.int64)})
        observed.append((int(now // bucket_s), n))
    current = int(now // bucket_s)
    expected = sum(n for bucket, n in observed if bucket > current - tracker.n_buckets)
    assert tracker.window_events == expected
    tracker.advance(now + window_s + bucket_s)
    assert tracker.window_events == 0


def test_crossings_report_both_directions() -> None:
    events = list(crossings({"a": 0.1, "b": 0.3}, {"a": 0.3, "b": 0.1, "c": 0.05}, 0.25))
    assert events == [("a", 0.3, True), ("b", 0.1, False)]
