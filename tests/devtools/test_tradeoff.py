"""``worker-dev tradeoff``: its pure parts (standardised scores, blends, purchase-only labels,
the bar and the table), and on a small simulated history that its "model" row is exactly what
``worker train`` reports for the same settings (the same examples, booster and evaluation)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from devtools import tradeoff
from devtools.tradeoff import BAR, COLUMNS, Row
from worker.apps.simulate import SimulatorSettings, write_history
from worker.apps.train import TrainSettings, train

SIM = SimulatorSettings(n_products=400, n_categories=12, n_users=2000, seed=3)
TINY = TrainSettings(
    num_trees=10, num_leaves=7, max_train_queries=1000, min_data_in_leaf=20, refit=False
)

scores = hnp.arrays(
    np.float64,
    st.tuples(st.integers(1, 6), st.integers(2, 8)),
    elements=st.floats(-1e3, 1e3, allow_nan=False),
)


@given(scores)
def test_standardised_rows_have_mean_0_and_keep_their_order(a: np.ndarray) -> None:
    z = tradeoff.standardised(a)
    assert np.all(np.isfinite(z))
    assert np.allclose(z.mean(axis=1), 0.0, atol=1e-9)
    for row, out in zip(a, z, strict=True):
        if np.ptp(row) > 1e-6 * max(1.0, np.abs(row).max()):
            assert np.allclose(out.std(), 1.0)
            # order kept: a larger score stays larger
            i, j = int(np.argmax(row)), int(np.argmin(row))
            assert out[i] > out[j]
        elif np.ptp(row) <= 1e-12 * max(1.0, np.abs(row).max()):
            assert np.all(out == 0)


@given(scores, scores)
def test_a_blend_of_weight_0_ranks_as_the_first_scorer(a: np.ndarray, b: np.ndarray) -> None:
    rows = min(a.shape[0], b.shape[0])
    width = a.shape[1]
    a = a[:rows]
    b = np.resize(b, (rows, width))
    score = tradeoff.blend(lambda _: a.reshape(-1), lambda _: b.reshape(-1), 0.0, width)
    out = score(np.empty(0)).reshape(rows, width)
    assert np.allclose(out, tradeoff.standardised(a))
    both = tradeoff.blend(lambda _: a.reshape(-1), lambda _: b.reshape(-1), 2.0, width)
    expected = tradeoff.standardised(a) + 2.0 * tradeoff.standardised(b)
    assert np.allclose(both(np.empty(0)).reshape(rows, width), expected)


def test_purchase_only_keeps_the_queries_with_a_purchase_and_only_their_purchases() -> None:
    y = np.array([[0, 1, 0], [2, 1, 0], [0, 0, 2], [0, 0, 0]], dtype=np.int8)
    keep, labels = tradeoff.purchase_only(y)
    assert keep.tolist() == [False, True, True, False]
    assert labels.tolist() == [[2, 0, 0], [0, 0, 2]]


def test_the_bar_and_the_marks() -> None:
    rows = [
        Row("model", (0.40, 0.60, 0.20, math.nan), heuristic=False),
        Row("recency", (0.20, 0.55, 0.0, 0.0), heuristic=True),
        Row("covisitation", (0.30, 0.10, 0.19, 0.05), heuristic=True),
    ]
    bar = tradeoff.bars(rows)
    assert bar == pytest.approx((BAR * 0.30, BAR * 0.55, BAR * 0.19, BAR * 0.05))
    table = tradeoff.format_table(rows, 10, [100, 10, 80, 0], [0.7, 0.75, 0.6, 0.0])
    lines = table.splitlines()
    for label, _, _ in COLUMNS:
        assert label in lines[0]
    model = lines[1].split()
    # 0.40 >= 0.33: marked; 0.60 < 0.605: not; 0.20 < 0.209: not; no event: not
    assert model == ["model", "0.400*", "0.600", "0.200", "nan"]
    assert lines[2].split() == ["recency", "0.200", "0.550", "0.000", "0.000"]
    assert lines[4].split()[-4:] == ["0.330", "0.605", "0.209", "0.055"]
    assert lines[5].split()[-4:] == ["0.700", "0.750", "0.600", "0.000"]


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("history")
    write_history(root, SIM, days=0.5)
    return root


def test_the_model_row_is_what_worker_train_reports(history: Path, tmp_path: Path) -> None:
    result = tradeoff.measure(history, TINY, [0.0, 1.0])
    assert result is not None
    _, metadata = train(history, tmp_path / "models", replace(TINY, publish=False))
    metrics = metadata["metrics"]
    rows = {row.name: row for row in result.rows}
    assert list(rows)[:4] == ["model", "purchase-only", "blend 0", "blend 1"]
    assert {r for r, row in rows.items() if row.heuristic} == set(metrics["rankers"]) - {"model"}
    for ranker in metrics["rankers"]:
        expected = []
        for _, target, discovery in COLUMNS:
            key = "next_item" if target == "next_item" else "purchase_within_attribution_window"
            m = metrics[key][ranker]
            expected.append((m["discovery"] if discovery else m)["hit_rate"])
        assert rows[ranker].hit_rates == pytest.approx(tuple(expected), abs=1e-12), ranker
    # a blend with weight 0 ranks as the model (standardising keeps each event's order)
    assert rows["blend 0"].hit_rates == pytest.approx(rows["model"].hit_rates)
    assert result.counts[0] == metrics["next_item"]["model"]["events"]
    assert result.ceiling[1] == pytest.approx(
        metrics["purchase_within_attribution_window"]["model"]["recall"]
    )
    assert "bar (x1.10)" in result.table()


def test_variant_samples() -> None:
    y = np.array([[0, 1], [2, 1], [0, 1], [1, 2], [0, 1], [1, 0]], dtype=np.int8)
    rng = np.random.default_rng(0)
    rows, labels, weights = tradeoff.variant_sample(y, tradeoff.Variant("all", queries=None), rng)
    assert rows.tolist() == list(range(6)) and np.array_equal(labels, y)
    assert weights.tolist() == [1.0] * 6
    kept = tradeoff.Variant("kept", queries=3, keep_purchases=True, purchase_weight=3.0)
    rows, labels, weights = tradeoff.variant_sample(y, kept, rng)
    assert len(rows) == 3 and {1, 3} <= set(rows.tolist())
    assert weights.tolist() == [3.0 if r in (1, 3) else 1.0 for r in rows.tolist()]
    positive = tradeoff.Variant("positive", queries=None, purchase_positive=True)
    _, labels, _ = tradeoff.variant_sample(y, positive, rng)
    assert labels.tolist() == [[0, 1], [2, 0], [0, 1], [0, 2], [0, 1], [1, 0]]
    rows, _, _ = tradeoff.variant_sample(y, tradeoff.Variant("few", queries=4), rng)
    assert len(rows) == 4 and len(set(rows.tolist())) == 4


def test_the_sweep_fits_each_variant_on_the_same_slice(history: Path) -> None:
    variants = (
        tradeoff.Variant("every query", queries=None),
        tradeoff.Variant("every query, weights 1", queries=None, purchase_weight=1.0),
        tradeoff.Variant("purchases x50", queries=None, purchase_weight=50.0),
    )
    rows, share = tradeoff.sweep(history, TINY, variants)
    assert [row.name for row in rows] == [v.name for v in variants]
    assert 0 < share < 1
    assert rows[0].hit_rates == rows[1].hit_rates  # deterministic fit
    assert rows[2].hit_rates != rows[0].hit_rates  # the weights reach the booster
