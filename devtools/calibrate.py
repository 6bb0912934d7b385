"""``worker-dev calibrate``: the simulator's difficulty against a real clickstream.

Builds two datasets, a simulated one (``worker simulate --out``, about ``--events`` events at the
default behaviour) and the DIGINETICA sample (``worker dataset import --format diginetica``),
runs the heuristic rankers of ``worker train``'s offline evaluation on both (the same split,
session replay, targets and metrics: :mod:`worker.apps.train` and :mod:`worker.core.baselines`;
no model is trained, which keeps it to a minute or two) and prints, side by side, each
heuristic's HR@K on the next product, on purchases and on the discovery variant of both, with
whether the simulated figure is within the band of the real one. Exit status 1 if any is out of
band, so the simulator's realism can be checked.

The band (:func:`in_band`): a simulated figure ``s`` matches a real figure ``r`` when
``|s - r| <= ABS_TOLERANCE`` (0.05) or ``1 / REL_FACTOR <= s / r <= REL_FACTOR`` (1.5). The
absolute part is there for small figures (popularity hits 1-3 % of the time on both, a ratio
of such small counts is mostly noise); the relative part for the large ones. The DIGINETICA
sample's evaluation slice is small (a few thousand events, a couple of hundred with a purchase
target), so its own sampling error is several points: a tighter band would test noise.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: A simulated figure is in band when within this absolute distance of the real one ...
ABS_TOLERANCE = 0.05
#: ... or within this factor of it (either way).
REL_FACTOR = 1.5

#: The columns compared: (label, target key, discovery?).
COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("next", "next_item", False),
    ("purchase", "purchase", False),
    ("next new", "next_item", True),
    ("purch new", "purchase", True),
)

DIGINETICA_FILES = ("sample_sessions_views_plus_purchases.csv", "product-categories.csv")
#: Events per simulated user and day at the default behaviour (measured: about 10).
EVENTS_PER_USER_DAY = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--diginetica",
        type=Path,
        default=Path("../shared/data/diginetica"),
        help="directory with the DIGINETICA sample (sample_sessions_views_plus_purchases.csv "
        "and product-categories.csv)",
    )
    parser.add_argument(
        "--events",
        type=int,
        default=200_000,
        help="approximate simulated events (2 days; the users scale with it)",
    )
    parser.add_argument("--days", type=float, default=2.0, help="simulated days")
    parser.add_argument(
        "--products",
        type=int,
        default=None,
        help="simulated catalogue size (default: worker simulate's)",
    )
    parser.add_argument(
        "--categories",
        type=int,
        default=None,
        help="simulated categories (default: worker simulate's)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the simulated sessions")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="keep both datasets here (default: temporary)"
    )


# -- the band --------------------------------------------------------------------------------


def in_band(simulated: float, real: float) -> bool:
    """Whether ``simulated`` is within the band of ``real`` (module docstring)."""
    if math.isnan(simulated) or math.isnan(real):
        return False
    if abs(simulated - real) <= ABS_TOLERANCE + 1e-12:
        return True
    if real <= 0 or simulated <= 0:
        return False
    return 1.0 / REL_FACTOR <= simulated / real <= REL_FACTOR


@dataclass(frozen=True)
class Row:
    """One ranker: per column (:data:`COLUMNS`), the simulated and the real HR@K."""

    ranker: str
    simulated: tuple[float, ...]
    real: tuple[float, ...]

    @property
    def in_band(self) -> tuple[bool, ...]:
        return tuple(in_band(s, r) for s, r in zip(self.simulated, self.real, strict=True))


def compare(
    simulated: dict[str, dict[str, Any]], real: dict[str, dict[str, Any]], rankers: Sequence[str]
) -> list[Row]:
    """Rows of the side-by-side table from two :func:`evaluate_baselines` results."""
    rows = []
    for ranker in rankers:
        values = []
        for side in (simulated, real):
            values.append(tuple(_hit_rate(side, ranker, key, disc) for _, key, disc in COLUMNS))
        rows.append(Row(ranker, values[0], values[1]))
    return rows


def _hit_rate(result: dict[str, dict[str, Any]], ranker: str, key: str, discovery: bool) -> float:
    metrics = result[key][ranker]
    if discovery:
        metrics = metrics["discovery"]
    return float(metrics["hit_rate"]) if metrics["events"] else math.nan


def format_table(rows: Iterable[Row], k: int, counts: dict[str, dict[str, int]]) -> str:
    """The side-by-side table: per column ``sim / real`` and ``ok`` or ``OUT``."""
    rows = list(rows)
    cell = 20
    head = f"{'HR@' + str(k) + ' sim / real':<18}" + "".join(
        f" | {label:<{cell}}" for label, _, _ in COLUMNS
    )
    lines = [head]
    for row in rows:
        line = f"{row.ranker:<18}"
        for s, r, ok in zip(row.simulated, row.real, row.in_band, strict=True):
            line += f" | {s:.3f} / {r:.3f} {'ok' if ok else 'OUT':<3}".ljust(cell + 3)
        lines.append(line.rstrip())
    events = "".join(
        f" | {counts['simulated'][label]:>7,} / {counts['real'][label]:<7,}".ljust(cell + 3)
        for label, _, _ in COLUMNS
    )
    lines.append(f"{'events sim / real':<18}{events}".rstrip())
    n_out = sum(not ok for row in rows for ok in row.in_band)
    lines.append(
        f"band: |sim - real| <= {ABS_TOLERANCE:g} or sim/real within x/÷{REL_FACTOR:g}; "
        f"{n_out} of {len(rows) * len(COLUMNS)} figures out of band"
    )
    return "\n".join(lines)


def event_counts(result: dict[str, dict[str, Any]], ranker: str) -> dict[str, int]:
    """Evaluation events per column (the same for every ranker)."""
    out = {}
    for label, key, disc in COLUMNS:
        metrics = result[key][ranker]
        out[label] = int((metrics["discovery"] if disc else metrics)["events"])
    return out


# -- the evaluation ----------------------------------------------------------------------------


def evaluate_baselines(dataset_dir: Path, settings: Any = None) -> dict[str, Any]:
    """The heuristic rankers of ``worker train`` on a dataset, without a model.

    The same steps as :func:`worker.apps.train.train` up to the evaluation: read the dataset,
    split it by event time, build the tables and the heuristics from the training window, replay
    every event through the serving session code and score every evaluation event with a target
    (``_collect_examples(train=False)``, the batches the model is scored on), then each heuristic
    on those events exactly as ``train._evaluate`` does, minus the booster.

    Returns:
        ``{"k", "n", "rankers", "next_item": {ranker: metrics}, "purchase": {...}}`` with the
        metrics of :meth:`worker.core.baselines.TargetMetrics.as_dict`.
    """
    from worker.apps import train
    from worker.core.baselines import SessionContext, TargetMetrics

    settings = settings or train.TrainSettings()
    data = train._read_dataset(dataset_dir, settings)
    history = data.history
    tables = train._training_tables(data, history.is_train, settings)
    rankers = train._fit_baselines(data, history.is_train, tables, settings)
    examples = train._collect_examples(
        history,
        tables,
        data.purchases,
        history.is_train,
        settings,
        np.random.default_rng(settings.seed),
        train=False,
    )
    k, n = settings.top_k, min(settings.n_candidates, tables.n_products)
    names = [r.name for r in rankers]
    next_item = {name: TargetMetrics() for name in names}
    purchase = {name: TargetMetrics() for name in names}
    for batch in examples.eval_batches:
        targets = batch.targets_next.tolist()
        categories = batch.categories.tolist()
        for row in range(len(targets)):
            session = batch.session_items[row]
            context = SessionContext(session[session >= 0][::-1].tolist(), categories[row])
            seen = batch.seen_targets[row]
            for ranker in rankers:
                top_n = ranker.rank(context, n)
                top, pool = top_n[:k], set(top_n)
                if targets[row] >= 0:
                    next_item[ranker.name].add(top, pool, {targets[row]}, seen, k)
                if batch.bought[row]:
                    purchase[ranker.name].add(top, pool, batch.bought[row], seen, k)
    return {
        "k": k,
        "n": n,
        "rankers": names,
        "events": len(history.events),
        "next_item": {name: m.as_dict() for name, m in next_item.items()},
        "purchase": {name: m.as_dict() for name, m in purchase.items()},
    }


# -- the command -------------------------------------------------------------------------------


def build_datasets(args: argparse.Namespace, work_dir: Path) -> tuple[Path, Path]:
    """The simulated and the DIGINETICA dataset directories under ``work_dir``."""
    from worker.apps.importers import import_dataset
    from worker.apps.simulate import write_history

    sim_dir, real_dir = work_dir / "simulated", work_dir / "diginetica"
    write_history(sim_dir, simulator_settings(args), days=args.days)
    inputs = [args.diginetica / name for name in DIGINETICA_FILES]
    import_dataset("diginetica", inputs, real_dir)
    return sim_dir, real_dir


def simulator_settings(args: argparse.Namespace) -> Any:
    """``worker simulate``'s settings for the calibration: its defaults, the users scaled to
    about ``--events`` events, and the catalogue of ``--products`` / ``--categories`` if given."""
    from worker.apps.simulate import SimulatorSettings

    users = max(100, int(args.events / (EVENTS_PER_USER_DAY * args.days)))
    sizes = {
        name: value
        for name, value in (("n_products", args.products), ("n_categories", args.categories))
        if value is not None
    }
    return SimulatorSettings(n_users=users, seed=args.seed, **sizes)


def run(args: argparse.Namespace, log: Any = None) -> int:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="calibrate-") as tmp:
        work_dir = args.work_dir or Path(tmp)
        sim_dir, real_dir = build_datasets(args, work_dir)
        built = time.perf_counter()
        simulated = evaluate_baselines(sim_dir)
        real = evaluate_baselines(real_dir)
    rows = compare(simulated, real, simulated["rankers"])
    counts = {
        "simulated": event_counts(simulated, rows[0].ranker),
        "real": event_counts(real, rows[0].ranker),
    }
    sizes = simulator_settings(args)
    print(
        f"simulated: {simulated['events']:,} events (seed {args.seed}, {args.days:g} days, "
        f"{sizes.n_products:,} products, {sizes.n_categories:,} categories, "
        f"{sizes.n_users:,} returning users); "
        f"DIGINETICA sample: {real['events']:,} events; last 20% of each by time evaluated"
    )
    print(format_table(rows, simulated["k"], counts))
    print(
        f"datasets {built - started:.0f} s, evaluation {time.perf_counter() - built:.0f} s; "
        "next/purchase: HR@K of the next product in the session / of a product bought within "
        "the attribution window; 'new': on products not yet seen in the session (discovery)"
    )
    return 0 if all(all(row.in_band) for row in rows) else 1
