"""Significance of hit-rate differences: two-proportion test and exact McNemar."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.core.stats import compare_proportions, mcnemar_p_value


def test_known_values() -> None:
    r = compare_proportions(480, 1000, 530, 1000)
    assert r.difference == pytest.approx(0.05)
    assert r.p_value == pytest.approx(0.0253, abs=1e-3)  # z = 2.236
    assert r.significant and 0 < r.ci95_low < 0.05 < r.ci95_high
    assert not compare_proportions(5, 10, 6, 10).significant
    assert mcnemar_p_value(0, 6) == pytest.approx(2 / 64)
    assert mcnemar_p_value(5, 5) == 1.0
    assert mcnemar_p_value(0, 0) == 1.0


@st.composite
def _counts(draw):
    n_a = draw(st.integers(0, 5000))
    n_b = draw(st.integers(0, 5000))
    return draw(st.integers(0, n_a)), n_a, draw(st.integers(0, n_b)), n_b


@given(_counts())
def test_two_proportion_properties(counts) -> None:
    h_a, n_a, h_b, n_b = counts
    r = compare_proportions(h_a, n_a, h_b, n_b)
    assert 0.0 <= r.p_value <= 1.0
    assert -1.0 <= r.ci95_low <= r.difference <= r.ci95_high <= 1.0
    swapped = compare_proportions(h_b, n_b, h_a, n_a)
    assert swapped.p_value == pytest.approx(r.p_value)
    assert swapped.difference == pytest.approx(-r.difference)


@given(st.integers(0, 3000), st.integers(0, 3000))
def test_mcnemar_properties(a: int, b: int) -> None:
    p = mcnemar_p_value(a, b)
    assert 0.0 <= p <= 1.0 and math.isfinite(p)
    assert p == pytest.approx(mcnemar_p_value(b, a))
    # One more discordant event on the side already ahead never makes the evidence weaker.
    if a > b:
        assert mcnemar_p_value(a + 1, b) <= p + 1e-12
