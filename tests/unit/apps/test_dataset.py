"""Dataset directories: write/read round trip, and the DIGINETICA sample in our schemas."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from fastavro.validation import validate

from worker.apps.dataset import (
    CATALOGUE_FILE,
    EVENTS_FILE,
    META_FILE,
    PURCHASES_FILE,
    clickstream_stats,
    iter_events,
    iter_purchases,
    load_diginetica,
    load_schema,
    read_catalogue,
    write_dataset,
)
from worker.core.clickstream import ClickstreamSimulator, SimulationConfig, make_catalogue

START_MS = 1_700_000_000_000
HOUR_MS = 3_600_000


def _shared_dir() -> Path:
    """``shared/`` beside the repository (or ``$WORKER_SHARED_DIR``)."""
    override = os.environ.get("WORKER_SHARED_DIR")
    return Path(override) if override else Path(__file__).resolve().parents[4] / "shared"


DIGINETICA = _shared_dir() / "data" / "diginetica"


def test_round_trip(tmp_path: Path) -> None:
    catalogue = make_catalogue(n_products=300, n_categories=12, seed=2)
    sim = ClickstreamSimulator(catalogue, SimulationConfig(n_users=300), seed=5)
    records = list(sim.records(START_MS, START_MS + 6 * HOUR_MS))
    events = [r for k, r in records if k == "event"]
    purchases = [r for k, r in records if k == "purchase"]
    assert events and purchases

    summary = write_dataset(tmp_path / "ds", catalogue, iter(records), {"seed": 5, "kind": "test"})
    for name in (EVENTS_FILE, PURCHASES_FILE, CATALOGUE_FILE, META_FILE):
        assert (tmp_path / "ds" / name).is_file()

    assert list(iter_events(tmp_path / "ds")) == events
    assert list(iter_purchases(tmp_path / "ds")) == purchases
    back = read_catalogue(tmp_path / "ds")
    assert back.product_ids == catalogue.product_ids
    assert back.category_ids == catalogue.category_ids
    assert np.array_equal(back.prices, catalogue.prices)
    assert np.array_equal(back.popularity, catalogue.popularity)

    meta = json.loads((tmp_path / "ds" / META_FILE).read_text())
    assert meta["seed"] == 5 and meta["kind"] == "test"
    assert summary["n_events"] == meta["n_events"] == len(events)
    assert summary["n_purchases"] == meta["n_purchases"] == len(purchases)
    assert summary["n_views"] + summary["n_add_to_cart"] + summary["n_remove_from_cart"] == len(
        events
    )
    assert summary["n_sessions"] == len({e["session_id"] for e in events})
    assert summary["min_event_time_ms"] == records[0][1]["event_time"]
    assert summary["max_event_time_ms"] == records[-1][1]["event_time"]


def test_write_rejects_unknown_kinds(tmp_path: Path) -> None:
    catalogue = make_catalogue(n_products=10, n_categories=2)
    with pytest.raises(ValueError, match="unknown record kind"):
        write_dataset(tmp_path, catalogue, [("click", {"event_time": 0})], {})


def test_schemas_are_package_data() -> None:
    """The wheel ships the top-level schemas/ as package data: the same bytes, no env needed."""
    source = Path(__file__).resolve().parents[3] / "schemas" / "browsing_event.avsc"
    shipped = resources.files("worker.wire") / "schemas" / "browsing_event.avsc"
    assert shipped.read_bytes() == source.read_bytes()
    assert load_schema("BrowsingEvent")["name"] == "com.shop.recommender.BrowsingEvent"


@pytest.fixture(scope="module")
def diginetica() -> tuple[list[dict], list[dict]]:
    sessions_csv = DIGINETICA / "sample_sessions_views_plus_purchases.csv"
    if not sessions_csv.is_file():
        pytest.skip(f"DIGINETICA sample not found under {DIGINETICA}")
    return load_diginetica(sessions_csv, DIGINETICA / "product-categories.csv")


def test_diginetica_counts(diginetica: tuple[list[dict], list[dict]]) -> None:
    events, purchases = diginetica
    assert len(events) == 12_391
    assert len(purchases) == 256
    assert all(e["event_type"] == "VIEW" for e in events)
    assert len({e["session_id"] for e in events}) == 2_986
    # one user per session, anonymous sessions stand for their visitor
    assert len({(e["session_id"], e["user_id"]) for e in events}) == 2_986
    assert len({e["product_id"] for e in events}) == 7_139
    assert [e["event_time"] for e in events] == sorted(e["event_time"] for e in events)
    assert sum(e["category_id"] is not None for e in events) / len(events) > 0.99
    schemas = {"event": load_schema("BrowsingEvent"), "purchase": load_schema("PurchaseOutcome")}
    for e in events[::50]:
        assert validate(e, schemas["event"], raise_errors=True)
    for p in purchases:
        assert validate(p, schemas["purchase"], raise_errors=True)


def test_diginetica_stats_match_the_readme(diginetica: tuple[list[dict], list[dict]]) -> None:
    stats = clickstream_stats(*diginetica)
    assert stats["n_sessions"] == 2_986
    # "138 of 2,986 sessions (4.6%) contain a purchase"
    assert stats["sessions_with_purchase_share"] == pytest.approx(138 / 2_986)
    # "121 of the 256 purchased items were viewed earlier in the same session"
    assert stats["purchase_preceded_share"] == pytest.approx(121 / 256)
    assert stats["session_length_median"] == 3
    assert 3.4 <= stats["session_length_mean"] <= 6


def test_stats_of_empty_input() -> None:
    stats = clickstream_stats([], [])
    assert stats["n_events"] == 0 and stats["n_sessions"] == 0
    assert np.isnan(stats["cart_per_view"])
