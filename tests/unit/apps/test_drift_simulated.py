"""Input drift on simulated traffic: a reference from one simulated history (tables as training
builds them, the reference replayed through the serving pipeline), then live runs through the
worker's recommender (a model that scores nothing: the features are what matters). A run of
another seed stays below the significant-shift threshold; a new product range and a changed
event mix cross it."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from worker.apps.train import TrainSettings, build_tables, event_from_record
from worker.core.catalogue import CatalogueTables
from worker.core.clickstream import (
    Catalogue,
    ClickstreamSimulator,
    SimulationConfig,
    make_catalogue,
)
from worker.core.drift import (
    PSI_MODERATE,
    PSI_SIGNIFICANT,
    DriftTracker,
    ReferenceProfile,
    reference_by_replay,
)
from worker.core.live_catalogue import LiveCatalogue
from worker.core.pipeline import BatchEntry, Recommender
from worker.core.records import BrowsingEvent
from worker.core.session import SessionStore

HOUR_MS = 3_600_000
CONFIG = SimulationConfig(n_users=8000)
#: Before any product launch: the history and the live runs see the same catalogue.
T0 = CONFIG.launch_origin_ms - 30 * HOUR_MS
CATALOGUE = make_catalogue(800, 16, seed=0)
BATCH = 500


def _events(
    catalogue: Catalogue, config: SimulationConfig, seed: int, start_ms: int, end_ms: int
) -> list[BrowsingEvent]:
    """Browsing events up to ``end_ms`` (what a worker has seen by then)."""
    sim = ClickstreamSimulator(catalogue, config, seed=seed)
    return [
        event_from_record(r)
        for kind, r in sim.records(start_ms, end_ms)
        if kind == "event" and r["event_time"] < end_ms
    ]


class _NoModel:
    def score(self, features: np.ndarray) -> np.ndarray:
        return np.zeros(features.shape[0])


@pytest.fixture(scope="module")
def trained() -> tuple[CatalogueTables, ReferenceProfile]:
    """Tables of a 6 h history, and the reference of its last 4.5 h (the first 1.5 h only warm
    the sessions up)."""
    events = _events(CATALOGUE, CONFIG, 1, T0, T0 + 6 * HOUR_MS)
    index = {p: i for i, p in enumerate(CATALOGUE.product_ids)}
    items = np.fromiter((index[e.product_id] for e in events), np.int32, len(events))
    types = np.fromiter((e.event_type for e in events), np.int8, len(events))
    _, sessions = np.unique([f"{e.user_id}/{e.session_id}" for e in events], return_inverse=True)
    order = np.lexsort((np.arange(len(events)), sessions))
    tables = build_tables(
        CATALOGUE.product_ids,
        CATALOGUE.category_ids,
        CATALOGUE.prices,
        items[order],
        types[order],
        sessions[order],
        TrainSettings(),
    )
    warm_up = int(np.searchsorted([e.event_time_ms for e in events], T0 + 90 * 60_000))
    return tables, reference_by_replay(tables, events, items, collect_from=warm_up)


def _live_psi(
    tables: CatalogueTables, reference: ReferenceProfile, events: list[BrowsingEvent]
) -> dict[str, float]:
    """PSI over the last 2 h of ``events`` fed to the worker's recommender in batches, the
    window rolled by event time."""
    tracker = DriftTracker(reference, window_s=2 * 3600, bucket_s=600)
    recommender = Recommender(tables, _NoModel(), n_candidates=50, drift=tracker)
    live, sessions = recommender.live, SessionStore()
    for lo in range(0, len(events), BATCH):
        chunk = events[lo : lo + BATCH]
        tracker.advance(chunk[-1].event_time_ms / 1000)
        recommender.recommend(sessions, [BatchEntry(e, _item(live, e)) for e in chunk])
    assert tracker.window_events > 3000
    return tracker.psi()


def _item(live: LiveCatalogue, event: BrowsingEvent) -> int:
    known = live.model.index.get(event.product_id)
    if known is None:  # as the worker's batch step does: a cold start
        return live.add(event.product_id, event.category_id, event.price)
    return known


def _summary(psi: dict[str, float]) -> str:
    top = sorted(psi.items(), key=lambda kv: -kv[1])[:4]
    return ", ".join(f"{name} {value:.3f}" for name, value in top)


LIVE = (T0 + 7 * HOUR_MS, T0 + 10 * HOUR_MS)


def test_unshifted_traffic_stays_below_the_threshold_and_shifted_traffic_crosses_it(
    trained: tuple[CatalogueTables, ReferenceProfile],
) -> None:
    tables, reference = trained
    started = time.perf_counter()
    same = _live_psi(tables, reference, _events(CATALOGUE, CONFIG, 2, *LIVE))
    # A new product range: other products (most ids the model does not know), other categories.
    new_range = _live_psi(
        tables, reference, _events(make_catalogue(1600, 16, seed=9), CONFIG, 2, *LIVE)
    )
    # Another event mix: six times as many add-to-carts.
    carts = _live_psi(
        tables, reference, _events(CATALOGUE, replace(CONFIG, cart_prob=0.15), 2, *LIVE)
    )
    print(
        f"live runs {time.perf_counter() - started:.1f} s\n"
        f"unshifted: {_summary(same)}\nnew range: {_summary(new_range)}\ncarts: {_summary(carts)}"
    )
    assert max(same.values()) < PSI_MODERATE
    assert max(new_range.values()) > PSI_SIGNIFICANT
    assert new_range["unknown_product"] > PSI_SIGNIFICANT
    assert max(carts.values()) > PSI_SIGNIFICANT
    assert carts["event_type"] > PSI_MODERATE
