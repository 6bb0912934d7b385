"""``worker-dev tradeoff``: how far one suggestion list can serve both targets.

The offline evaluation (``worker train``) scores one ranked list per event against two targets,
the next product in the session and the products bought within the attribution window. The two
pull the list apart: most next products are new to the session, while most bought products were
viewed in it. This command measures that pull on a dataset, with the examples ``worker train``
builds (the same split, honest folds, candidates and features: :func:`worker.apps.train.
window_examples`) and the same evaluation (:func:`worker.apps.train.evaluate_scores`):

* ``model``: the booster ``worker train`` fits (both labels, a purchase gaining
  ``purchase_gain`` times a next product);
* ``purchase-only``: a booster fit on the training queries that have a purchase, with only the
  purchases as positives (the next product counts as nothing): the best this feature set does for
  the purchase target alone;
* ``blend l``: per event, the two boosters' scores standardised over its candidates and added,
  the purchase-only one weighted by ``l``: what serving both boosters would buy on the way;
* every heuristic of the evaluation, and per column the bar of the issue's target (10 % above the
  strongest heuristic's HR@K), each figure marked where it clears it;
* with ``--sweep``, single boosters fit other ways (:data:`SWEEP`: settings, query counts,
  purchase query weights, sampling, labels) on every training query ``worker train`` samples from.

A model change that claims to lift the purchase target without costing the next product can be
checked against this frontier. Minutes on the default simulated history (the heuristics'
evaluation, session-kNN above all, is most of it); seconds on the DIGINETICA sample.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: The columns: (label, target attribute of the Evaluation, discovery?).
COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("next", "next_item", False),
    ("purchase", "purchase", False),
    ("next new", "next_item", True),
    ("purch new", "purchase", True),
)
#: The target's bar: the model at least this factor of the strongest heuristic's HR@K.
BAR = 1.10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", type=Path, required=True, help="a dataset directory")
    parser.add_argument(
        "--blends",
        default="0.25,0.5,1",
        help="weights of the purchase-only booster's standardised scores (comma separated)",
    )
    parser.add_argument("--threads", type=int, default=2, help="LightGBM threads")
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="also fit single boosters of other settings, sampling and labels (SWEEP) on every "
        "training query and print their HR@K (a few minutes more on the default history)",
    )


@dataclass(frozen=True)
class Variant:
    """A single booster fit another way: ``settings`` replaced in TrainSettings, ``queries``
    sampled from every training query (None: all), ``purchase_weight`` on the queries with a
    purchase, ``keep_purchases``: every such query kept when sampling, ``purchase_positive``:
    in those queries only the purchases positive."""

    name: str
    settings: tuple[tuple[str, Any], ...] = ()
    queries: int | None = 40_000
    purchase_weight: float = 1.0
    keep_purchases: bool = False
    purchase_positive: bool = False


#: What ``--sweep`` tries; the first samples as many queries as ``worker train``, from all of them.
SWEEP: tuple[Variant, ...] = (
    Variant("40,000 queries (resampled)"),
    Variant("purchase gain 20", settings=(("purchase_gain", 20.0),)),
    Variant("31 leaves", settings=(("num_leaves", 31),)),
    Variant("400 trees", settings=(("num_trees", 400),)),
    Variant("100,000 queries", queries=100_000),
    Variant("every query", queries=None),
    Variant("purchase queries x2", purchase_weight=2.0),
    Variant("purchase queries x4", purchase_weight=4.0),
    Variant("every query, purchase x3", queries=None, purchase_weight=3.0),
    Variant("every purchase query kept", keep_purchases=True),
    Variant("purchases only positive", purchase_positive=True),
)


def variant_sample(
    y: np.ndarray, variant: Variant, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The queries of ``y`` (labels 0/1/2) a variant is fit on, their labels and their
    weights (one per query)."""
    n = y.shape[0]
    bought = (y == 2).any(axis=1)
    if variant.queries is None or variant.queries >= n:
        rows = np.arange(n)
    elif variant.keep_purchases:
        rest = np.flatnonzero(~bought)
        extra = rng.choice(
            rest, max(0, min(rest.size, variant.queries - int(bought.sum()))), replace=False
        )
        rows = np.sort(np.concatenate([np.flatnonzero(bought), extra]))
    else:
        rows = np.sort(rng.choice(n, variant.queries, replace=False))
    labels = y[rows]
    if variant.purchase_positive:
        labels = np.where(bought[rows][:, None], np.where(labels == 2, 2, 0), labels)
    weights = np.where(bought[rows], variant.purchase_weight, 1.0)
    return rows, labels.astype(np.int8), weights


@dataclass(frozen=True)
class Row:
    """One ranker's HR@K per column (:data:`COLUMNS`; NaN where a column has no event)."""

    name: str
    hit_rates: tuple[float, ...]
    heuristic: bool


def standardised(scores: np.ndarray) -> np.ndarray:
    """Each row's scores less their mean, over their standard deviation (a row constant to
    rounding: 0)."""
    centred = scores - scores.mean(axis=1, keepdims=True)
    spread = scores.std(axis=1, keepdims=True)
    scale = np.maximum(np.abs(scores).max(axis=1, keepdims=True), 1.0)
    flat = spread <= 1e-12 * scale
    out: np.ndarray = np.divide(centred, spread, out=np.zeros_like(centred), where=~flat)
    return out


def blend(
    first: Callable[[np.ndarray], np.ndarray],
    second: Callable[[np.ndarray], np.ndarray],
    weight: float,
    n_candidates: int,
) -> Callable[[np.ndarray], np.ndarray]:
    """A scorer of feature rows (events x ``n_candidates`` of them, event-major): the two
    scorers' scores standardised per event, the second weighted by ``weight``, added."""

    def score(x: np.ndarray) -> np.ndarray:
        a = np.asarray(first(x), dtype=np.float64).reshape(-1, n_candidates)
        b = np.asarray(second(x), dtype=np.float64).reshape(-1, n_candidates)
        return (standardised(a) + weight * standardised(b)).reshape(-1)

    return score


def purchase_only(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The queries of ``y`` (labels 0/1/2 per candidate) with a purchase, and their labels with
    only the purchases kept (a next product's 1 becomes 0)."""
    keep = (y == 2).any(axis=1)
    labels = np.where(y[keep] == 2, 2, 0).astype(np.int8)
    return keep, labels


def bars(rows: Sequence[Row]) -> tuple[float, ...]:
    """Per column, :data:`BAR` times the strongest heuristic's HR@K."""
    heuristics = [row.hit_rates for row in rows if row.heuristic]
    return tuple(
        BAR * max((h[i] for h in heuristics if not np.isnan(h[i])), default=np.nan)
        for i in range(len(COLUMNS))
    )


def format_table(
    rows: Sequence[Row], k: int, counts: Sequence[int], ceiling: Sequence[float]
) -> str:
    """The table: a line per ranker, ``*`` on a model figure at or above the column's bar, the
    bar, the share of events with a target among the candidates (no ranking of them does
    better) and the events per column."""
    bar = bars(rows)
    width = max(len(row.name) for row in rows) + 2
    lines = [f"{'HR@' + str(k):<{width}}" + "".join(f"{c[0]:>12}" for c in COLUMNS)]
    for row in rows:
        cells = ""
        for value, limit in zip(row.hit_rates, bar, strict=True):
            mark = " " if row.heuristic or np.isnan(value) or value < limit else "*"
            cells += f"{value:>11.3f}{mark}"
        lines.append(f"{row.name:<{width}}{cells}")
    lines.append(f"{'bar (x1.10)':<{width}}" + "".join(f"{b:>11.3f} " for b in bar))
    lines.append(f"{'in candidates':<{width}}" + "".join(f"{c:>11.3f} " for c in ceiling))
    lines.append(f"{'events':<{width}}" + "".join(f"{n:>11,} " for n in counts))
    lines.append(
        "* clears the bar: 10 % above the strongest heuristic of its column; "
        "'new': HR@K on products not yet seen in the session (discovery)"
    )
    return "\n".join(lines)


def _row(name: str, evaluation: Any, ranker: str, heuristic: bool) -> Row:
    values = []
    for _, target, discovery in COLUMNS:
        metrics = getattr(evaluation, target)[ranker].as_dict()
        if discovery:
            metrics = metrics["discovery"]
        values.append(float(metrics["hit_rate"]) if metrics["events"] else float("nan"))
    return Row(name, tuple(values), heuristic)


def _column(evaluation: Any, key: str) -> list[Any]:
    """The model's ``key`` metric (``events``, ``recall``) per column."""
    out = []
    for _, target, discovery in COLUMNS:
        metrics = getattr(evaluation, target)["model"].as_dict()
        out.append((metrics["discovery"] if discovery else metrics)[key])
    return out


@dataclass
class Tradeoff:
    """What :func:`measure` finds: the rows of the table, the evaluation events per column and
    the share of them with a target among the candidates."""

    rows: list[Row]
    counts: list[int]
    ceiling: list[float]
    k: int

    def table(self) -> str:
        return format_table(self.rows, self.k, self.counts, self.ceiling)


def measure(
    dataset: Path, settings: Any, weights: Sequence[float], log: Any = None
) -> Tradeoff | None:
    """The model, the purchase-only booster, their blends by ``weights`` and the heuristics on
    the held-out slice of ``dataset`` (``settings``: a :class:`worker.apps.train.TrainSettings`);
    None when no training query has a purchase."""
    from worker.apps import train
    from worker.model.scoring import BoosterScorer

    started = time.perf_counter()
    data = train._read_dataset(dataset, settings)
    window = data.history.is_train
    tables, examples = train.window_examples(data, window, settings, log=log)
    x, y = examples.x_train, examples.y_train
    keep, labels = purchase_only(y)
    if not keep.any():
        return None
    both, _ = train._fit(x, y, settings)
    bought, _ = train._fit(x[keep], labels, settings)
    if log:
        log.info("fitted", queries=int(x.shape[0]), seconds=round(time.perf_counter() - started, 1))
    score_both = BoosterScorer(both, num_threads=settings.num_threads).score
    score_bought = BoosterScorer(bought, num_threads=settings.num_threads).score
    rankers = train._fit_baselines(data, window, tables, settings)
    batches = examples.eval_batches
    evaluation = train.evaluate_scores(score_both, batches, rankers, tables, settings)
    rows = [_row("model", evaluation, "model", False)]
    variants = [("purchase-only", score_bought)] + [
        (f"blend {w:g}", blend(score_both, score_bought, w, x.shape[1])) for w in weights
    ]
    for name, score in variants:
        alone = train.evaluate_scores(score, batches, [], tables, settings)
        rows.append(_row(name, alone, "model", False))
    rows += [_row(r.name, evaluation, r.name, True) for r in rankers]
    return Tradeoff(
        rows,
        [int(n) for n in _column(evaluation, "events")],
        [float(r) for r in _column(evaluation, "recall")],
        settings.top_k,
    )


def sweep(
    dataset: Path, settings: Any, variants: Sequence[Variant], log: Any = None
) -> tuple[list[Row], float]:
    """Each variant's HR@K per column on the held-out slice (rows not heuristic), from every
    training query ``worker train`` would sample from; and the share of those with a purchase."""
    from dataclasses import replace

    from worker.apps import train
    from worker.model.scoring import BoosterScorer

    settings = replace(settings, max_train_queries=1 << 62)
    data = train._read_dataset(dataset, settings)
    tables, examples = train.window_examples(data, data.history.is_train, settings, log=log)
    x, y = examples.x_train, examples.y_train
    rows = []
    for variant in variants:
        fit_settings = replace(settings, **dict(variant.settings))
        picked, labels, weights = variant_sample(y, variant, np.random.default_rng(settings.seed))
        booster, _ = train._fit(x[picked], labels, fit_settings, weights)
        score = BoosterScorer(booster, num_threads=settings.num_threads).score
        alone = train.evaluate_scores(score, examples.eval_batches, [], tables, settings)
        rows.append(_row(variant.name, alone, "model", False))
        if log:
            log.info(
                "variant", name=variant.name, hit_rates=[round(h, 4) for h in rows[-1].hit_rates]
            )
    return rows, float((y == 2).any(axis=1).mean())


def run(args: argparse.Namespace, log: Any) -> int:
    from worker.apps.train import TrainSettings

    started = time.perf_counter()
    weights = [float(w) for w in str(args.blends).split(",") if w.strip()]
    result = measure(args.dataset, TrainSettings(num_threads=args.threads), weights, log)
    if result is None:
        print(f"{args.dataset}: no training event is followed by a purchase of a candidate")
        return 2
    print(result.table())
    if args.sweep:
        heuristics = [row for row in result.rows if row.heuristic]
        rows, share = sweep(args.dataset, TrainSettings(num_threads=args.threads), SWEEP, log)
        print()
        print(format_table(rows + heuristics, result.k, result.counts, result.ceiling))
        print(f"training queries with a purchase: {share:.1%}")
    log.info("tradeoff_done", seconds=round(time.perf_counter() - started, 1))
    return 0
