"""The one rule for every system's maximum (devtools.bench.sweep): a rate sweep with a p99
bound, against fake systems of known capacity."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devtools.bench.sweep import FACTOR, P99_BOUND_MS, REFINE_STEPS, find_max, kept_up


def system(capacity: float, *, fail_with: Exception | None = None):
    """Keeps up (p99 10 ms, everything answered) up to ``capacity``/s; above it, p99 grows past
    the bound and the last events of the step are not answered in time."""
    calls: list[float] = []

    def measure(rate: float) -> dict:
        calls.append(rate)
        if fail_with is not None and rate > capacity:
            raise fail_with
        events = int(rate * 10)
        if rate <= capacity:
            return {"events": events, "answered": events, "p99_ms": 10.0}
        return {"events": events, "answered": events - 1, "p99_ms": 4000.0}

    measure.calls = calls  # type: ignore[attr-defined]
    return measure


@given(
    capacity=st.floats(50, 50_000),
    start_over_capacity=st.floats(0.05, 20),
)
def test_the_maximum_is_never_above_capacity_and_within_the_refinement_below_it(
    capacity, start_over_capacity
):
    measure = system(capacity)
    out = find_max(measure, capacity * start_over_capacity, max_steps=12)
    found = out["max_offered_per_s"]
    assert found is not None
    assert found <= capacity + 0.05  # rounded to 0.1/s
    # The last kept-up rate and the first failed one end within FACTOR ** (1 / 2**REFINE).
    assert found >= capacity / FACTOR ** (1 / 2**REFINE_STEPS) - 0.1
    assert len(measure.calls) <= 12 + REFINE_STEPS
    assert out["best"]["offered_per_s"] == found and out["best"]["kept_up"]
    assert [s["kept_up"] for s in out["steps"]] == [r <= capacity for r in measure.calls]


def test_a_start_too_high_steps_down_and_a_system_that_never_keeps_up_has_no_maximum():
    out = find_max(system(100.0), 1000.0, max_steps=8)
    rates = [s["offered_per_s"] for s in out["steps"]]
    assert rates[:2] == [1000.0, round(1000 / FACTOR, 1)]
    assert 100 / FACTOR < out["max_offered_per_s"] <= 100
    never = find_max(system(1.0), 1000.0, max_steps=3)
    assert never["max_offered_per_s"] is None and never["best"] is None
    assert len(never["steps"]) == 3  # no refinement without a kept-up rate


def test_a_step_that_fails_counts_as_not_kept_up_and_the_sweep_goes_on():
    out = find_max(system(300.0, fail_with=RuntimeError("no answer to the probe")), 100.0)
    errors = [s for s in out["steps"] if "error" in s]
    assert errors and all(not s["kept_up"] for s in errors)
    assert "no answer to the probe" in errors[0]["error"]
    assert 300 / FACTOR < out["max_offered_per_s"] <= 300


@pytest.mark.parametrize(
    ("step", "ok"),
    [
        ({"events": 10, "answered": 10, "p99_ms": P99_BOUND_MS}, True),
        ({"events": 10, "answered": 10, "p99_ms": P99_BOUND_MS + 0.1}, False),
        ({"events": 10, "answered": 9, "p99_ms": 5.0}, False),
        ({"events": 10, "answered": 10, "p99_ms": None}, False),
        ({"events": 0, "answered": 0, "p99_ms": 1.0}, False),
        ({"error": "x", "events": 10, "answered": 10, "p99_ms": 1.0}, False),
    ],
)
def test_kept_up_needs_every_answer_within_the_bound(step, ok):
    assert kept_up(step) is ok


def test_the_rule_is_recorded_with_the_sweep():
    out = find_max(system(500.0), 200.0)
    assert out["rule"] == {
        "p99_bound_ms": P99_BOUND_MS,
        "factor": FACTOR,
        "refine_steps": REFINE_STEPS,
        "start_per_s": 200.0,
    }
    assert math.isclose(out["steps"][1]["offered_per_s"], 300.0)
