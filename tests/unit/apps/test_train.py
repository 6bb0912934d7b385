"""`worker train`: every usable record used, the unusable ones counted and bounded, the model
evaluated on the later slice of the history and then refit on all of it.

A small simulated history (a few seconds to write) and tiny models (10 trees of 7 leaves)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from worker import cli
from worker.apps.dataset import iter_events, iter_purchases, read_catalogue, write_dataset
from worker.apps.simulate import SimulatorSettings, write_history
from worker.apps.train import TrainSettings, _seen_targets, format_evaluation, train
from worker.config import SettingError
from worker.core.baselines import BASELINE_NAMES
from worker.core.catalogue import CatalogueTables
from worker.core.clickstream import Catalogue
from worker.core.drift import QUANTITIES, ReferenceProfile
from worker.core.pipeline import advance_sessions
from worker.core.records import EVENT_TYPE_CODE, BrowsingEvent
from worker.core.session import SessionStore
from worker.model.artifact import read_metadata

SIM = SimulatorSettings(n_products=400, n_categories=12, n_users=2000, seed=3)
TINY = TrainSettings(num_trees=10, num_leaves=7, max_train_queries=1000, min_data_in_leaf=20)
#: The same on the command line.
TINY_ARGV = ["--trees", "10", "--leaves", "7", "--max-queries", "1000", "--log-format", "json"]
#: A product no catalogue and no event names; only a purchase line does.
ONLY_BOUGHT = "p-only-bought"


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Half a day of simulated history; every product in its catalogue.csv."""
    root = tmp_path_factory.mktemp("history")
    write_history(root, SIM, days=0.5)
    return root


@pytest.fixture(scope="module")
def refit_and_not(
    history: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metadata of the default run (refit) and of a --no-refit run on the same history."""
    root = tmp_path_factory.mktemp("models")
    _, refit = train(history, root / "refit", TINY)
    _, not_refit = train(history, root / "not-refit", replace(TINY, refit=False))
    return refit, not_refit


def _records(directory: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return list(iter_events(directory)), list(iter_purchases(directory))


def _rewrite(
    source: Path,
    out: Path,
    *,
    without: Iterable[str] = (),
    events: list[dict[str, Any]] | None = None,
    purchases: list[dict[str, Any]] | None = None,
) -> Path:
    """``source`` as a new dataset: its catalogue without the products ``without``, and the
    given records (by default its own)."""
    catalogue = read_catalogue(source)
    leave_out = set(without)
    keep = [i for i, pid in enumerate(catalogue.product_ids) if pid not in leave_out]
    smaller = Catalogue(
        product_ids=tuple(catalogue.product_ids[i] for i in keep),
        category_ids=tuple(catalogue.category_ids[i] for i in keep),
        prices=catalogue.prices[keep],
        popularity=catalogue.popularity[keep],
    )
    own_events, own_purchases = _records(source)
    records = [("event", e) for e in (own_events if events is None else events)]
    records += [("purchase", p) for p in (own_purchases if purchases is None else purchases)]
    write_dataset(out, smaller, records, {"derived_from": str(source)})
    return out


def _spoil(records: list[dict[str, Any]], every: int, fields: tuple[str, ...]) -> Counter[str]:
    """Empty one of ``fields`` (in turn) of every ``every``-th record; the count by reason."""
    spoiled: Counter[str] = Counter()
    for n, record in enumerate(records[::every]):
        name = fields[n % len(fields)]
        record[name] = ""
        spoiled[f"empty_{name}"] += 1
    return spoiled


def test_products_missing_from_the_catalogue_join_it_and_nothing_is_dropped(
    history: Path, tmp_path: Path
) -> None:
    """Before, their events and purchases were silently left out. Now every event is used; the
    products join the model's catalogue with their events' category and price, or the unknown
    category and price (a product only bought)."""
    catalogue = read_catalogue(history)
    events, purchases = _records(history)
    viewed = Counter(e["product_id"] for e in events)
    missing = {pid for pid, _ in viewed.most_common(40)[::2]}  # popular ones: many events
    purchases.append({**purchases[-1], "order_id": "o-extra", "product_id": ONLY_BOUGHT})
    dataset = _rewrite(history, tmp_path / "ds", without=missing, purchases=purchases)

    path, metadata = train(dataset, tmp_path / "models", TINY)

    data = metadata["data"]
    assert data["events"] == {
        "read": len(events),
        "used": len(events),
        "dropped": 0,
        "dropped_by_reason": {},
    }
    assert data["purchase_lines"]["used"] == data["purchase_lines"]["read"] == len(purchases)
    assert data["products"] == {
        "read": len(catalogue) + 1,  # catalogue.csv's and those of the records
        "used": len(catalogue) + 1,
        "dropped": 0,
        "in_catalogue_csv": len(catalogue) - len(missing),
        "added_from_events": len(missing) + 1,
    }
    tables = CatalogueTables.load(path / "tables.npz")
    original = {pid: i for i, pid in enumerate(catalogue.product_ids)}
    for pid in missing:  # the simulator's events carry the catalogue's category and price
        i = tables.index_of(pid)
        assert tables.category_ids[tables.category[i]] == catalogue.category_ids[original[pid]]
        assert tables.log_price[i] == pytest.approx(np.log1p(catalogue.prices[original[pid]]))
        assert tables.log_pop[i] > 0  # their views count
    i = tables.index_of(ONLY_BOUGHT)
    assert (tables.category_ids[tables.category[i]], tables.log_price[i]) == ("", 0.0)
    assert set(metadata["popular_top"][:10]) & missing  # popular, and known to the model


def test_too_many_unusable_records_refuse_the_dataset_with_exit_2_and_one_line(
    history: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """2% of the events unusable, more than the default 1%: no model, one line naming the
    share, the reasons and the threshold."""
    events, _ = _records(history)
    spoiled = _spoil(events, 50, ("user_id", "product_id"))
    dataset = _rewrite(history, tmp_path / "ds", events=events)
    models = tmp_path / "models"

    code = cli.main(["train", "--dataset", str(dataset), "--models-dir", str(models), *TINY_ARGV])

    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    logged = json.loads(line)
    assert logged["error_class"] == "UnusableDatasetError"
    n = sum(spoiled.values())
    share = f"{n / len(events):.1%}"
    assert f"{n:,} of {len(events):,} events ({share}: " in logged["error"]
    for reason, count in spoiled.items():
        assert f"{count:,} {reason}" in logged["error"]
    assert "--max-dropped-share 0.01 (1.0%)" in logged["error"]
    assert not models.exists()


def test_unusable_records_under_the_threshold_are_dropped_counted_and_printed(
    history: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under --max-dropped-share, training goes on without them; the metadata's counts are
    those of the records themselves, and the command prints them."""
    events, purchases = _records(history)
    spoiled_events = _spoil(events, 200, ("user_id", "product_id"))
    spoiled_purchases = _spoil(purchases, 25, ("product_id",))
    dataset = _rewrite(history, tmp_path / "ds", events=events, purchases=purchases)
    models = tmp_path / "models"

    argv = ["train", "--dataset", str(dataset), "--models-dir", str(models), *TINY_ARGV]
    assert cli.main([*argv, "--max-dropped-share", "0.05"]) == 0

    data = read_metadata(models)["data"]
    used_events = [e for e in events if e["user_id"] and e["product_id"]]
    used_purchases = [p for p in purchases if p["product_id"]]
    assert data["events"] == {
        "read": len(events),
        "used": len(used_events),
        "dropped": sum(spoiled_events.values()),
        "dropped_by_reason": dict(spoiled_events),
    }
    assert data["purchase_lines"] == {
        "read": len(purchases),
        "used": len(used_purchases),
        "dropped": sum(spoiled_purchases.values()),
        "dropped_by_reason": dict(spoiled_purchases),
    }
    users_read = {r["user_id"] for r in events + purchases if r["user_id"]}
    users_used = {r["user_id"] for r in used_events + used_purchases}
    assert data["users"] == {
        "read": len(users_read),
        "used": len(users_used),
        "dropped": len(users_read - users_used),
    }
    n_products = len(read_catalogue(dataset))  # the simulator's events name no other product
    assert data["products"] == {
        "read": n_products,
        "used": n_products,
        "dropped": 0,
        "in_catalogue_csv": n_products,
        "added_from_events": 0,
    }
    assert data["max_dropped_share"] == 0.05
    out = capsys.readouterr().out
    assert f"{len(events):,}" in out and f"{len(used_events):,}" in out
    assert "empty_user_id" in out and "served: refit on the whole history" in out


def test_served_model_covers_the_whole_history_and_the_evaluation_the_later_slice(
    history: Path, refit_and_not: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    """Metrics come from a model fit on the first 80 % and scored on the rest; the served
    model, its tables and its popularity baseline come from every event."""
    refit, _ = refit_and_not
    events, _ = _records(history)
    times = sorted(e["event_time"] for e in events)
    start, end = times[0], times[-1]
    split = start + int((end - start) * 0.8)
    assert refit["training_window"] == {"start_ms": start, "end_ms": end, "events": len(events)}
    assert refit["evaluation_window"] == {
        "start_ms": split,
        "end_ms": end,
        "events": sum(t >= split for t in times),
    }
    assert refit["evaluation_model"]["training_window"] == {
        "start_ms": start,
        "end_ms": split,
        "events": sum(t < split for t in times),
    }
    assert refit["evaluation_model"]["is_served_model"] is False
    assert refit["metrics"]["next_item"]["model"]["events"] > 0
    assert refit["metrics"]["purchase_within_attribution_window"]["model"]["events"] > 0
    # The baseline the monitor compares live traffic with: the most viewed of the whole history
    # (ties by catalogue order, as the tables rank them).
    order = {pid: i for i, pid in enumerate(read_catalogue(history).product_ids)}
    views = Counter(e["product_id"] for e in events if e["event_type"] == "VIEW")
    by_views = sorted(order, key=lambda pid: (-views[pid], order[pid]))
    assert refit["popular_top"] == by_views[: len(refit["popular_top"])]
    # The input drift reference the workers compare live traffic with: every quantity.
    profile = ReferenceProfile.from_json(refit["drift_reference"])
    assert set(profile.quantities) == set(QUANTITIES)


def test_refit_leaves_the_evaluation_as_it_was(
    refit_and_not: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    """The held-out metrics are those of a --no-refit run (today's model), which serves the
    evaluated model itself."""
    refit, not_refit = refit_and_not
    assert refit["metrics"] == not_refit["metrics"]
    assert refit["evaluation_window"] == not_refit["evaluation_window"]
    assert refit["evaluation_model"] == not_refit["evaluation_model"] | {"is_served_model": False}
    assert not_refit["evaluation_model"]["is_served_model"] is True
    assert not_refit["training_window"] == not_refit["evaluation_model"]["training_window"]
    assert refit["training_window"]["events"] > not_refit["training_window"]["events"]
    assert refit["version"].split("-")[1] != not_refit["version"].split("-")[1]  # other trees


def test_every_ranker_is_scored_on_the_same_events_for_both_targets(
    refit_and_not: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    """The model and every heuristic, on the same evaluation events, both targets, with the
    discovery variant; the printed table names them all and says how the model compares with
    the strongest heuristic."""
    refit, _ = refit_and_not
    metrics = refit["metrics"]
    rankers = ["model", *BASELINE_NAMES]
    assert metrics["rankers"] == rankers
    assert (metrics["k"], metrics["n"]) == (TINY.top_k, TINY.n_candidates)
    keys = {"events", "hit_rate", "mrr", "ndcg", "recall"}
    for target in ("next_item", "purchase_within_attribution_window"):
        rows = metrics[target]
        assert list(rows) == rankers
        events = rows["model"]["events"]
        discovery_events = rows["model"]["discovery"]["events"]
        assert 0 < discovery_events <= events
        for ranker in rankers:
            row = rows[ranker]
            assert set(row) == keys | {"discovery"} and set(row["discovery"]) == keys
            assert (row["events"], row["discovery"]["events"]) == (events, discovery_events)
            for part in (row, row["discovery"]):
                assert 0 <= part["mrr"] <= part["ndcg"] <= part["hit_rate"] <= part["recall"] <= 1
        # Recency suggests only the session's own products: never a discovery.
        assert rows["recency"]["discovery"]["hit_rate"] == 0.0
        assert rows["recency"]["hit_rate"] > 0.0
        best = metrics["strongest_baseline"][target]
        assert best["ranker"] in BASELINE_NAMES
        assert best["hit_rate"] == max(rows[r]["hit_rate"] for r in BASELINE_NAMES)
        assert best["model_relative"] == pytest.approx(
            rows["model"]["hit_rate"] / best["hit_rate"] - 1
        )
    table = format_evaluation(refit)
    for ranker in rankers:
        assert f"\n{ranker} " in table
    assert table.count("model leads by") + table.count("model loses by") == 2
    assert refit["evaluation_seconds"] > 0


def test_discovery_knows_the_whole_serving_session_not_only_its_last_20_events() -> None:
    """The seen set of an evaluated event: every product of its serving session so far (beyond
    the 20 the session keeps), itself included; a 30-minute gap starts a new one."""
    minute = 60_000
    plan = [("u", i, i * 1000) for i in range(25)]  # products 0..24, one per second
    plan += [("u", 5, 25_000), ("v", 0, 25_000), ("u", 7, 25_000 + 31 * minute)]
    events = [
        BrowsingEvent(f"e{n}", user, "s1", EVENT_TYPE_CODE["VIEW"], f"p{item}", "c", 1.0, t)
        for n, (user, item, t) in enumerate(plan)
    ]
    items = np.array([item for _, item, _ in plan], dtype=np.int32)
    batch = advance_sessions(SessionStore(history=20), events, items)
    evaluated = np.zeros(len(plan), dtype=bool)
    evaluated[25:] = True
    targets_next = np.full(len(plan), -1, dtype=np.int32)
    targets_next[25:] = [0, 1, 5]
    bought: list[set[int]] = [set() for _ in plan]
    bought[25], bought[27] = {3, 99}, {7}

    seen = _seen_targets({}, events, batch, evaluated, targets_next, bought)

    # Product 0 left the 20 kept interactions, but the user saw it in this session.
    assert 0 not in batch.items[25].tolist()
    assert seen == {25: {0, 3}, 26: set(), 27: {7}}  # v's session is v's; u's restarted


def test_the_new_train_flags(capsys: pytest.CaptureFixture[str]) -> None:
    """--max-dropped-share is a fraction; --no-refit turns the refit off; both flags only."""
    parse = cli.build_parser().parse_args
    assert cli.train_settings(parse(["train", "--dataset", "d"])) == TrainSettings()
    args = parse(["train", "--dataset", "d", "--max-dropped-share", "0", "--no-refit"])
    assert cli.train_settings(args) == TrainSettings(max_dropped_share=0.0, refit=False)
    with pytest.raises(SystemExit) as exited:
        parse(["train", "--dataset", "d", "--max-dropped-share", "1.5"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "worker train: error: --max-dropped-share: 1.5 is not a fraction from 0 to 1"
    ]
    with pytest.raises(SettingError, match="--max-dropped-share: -0.1 is not a fraction"):
        TrainSettings(max_dropped_share=-0.1)
