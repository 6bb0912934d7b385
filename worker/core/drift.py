"""Input drift: how far the live input has moved from the serving model's training window.

Pure core: the caller supplies the time (:meth:`DriftTracker.advance`); nothing here reads a
clock, Kafka or the environment.

Quantities
    Per event: ``event_type`` (the mix of views, add-to-carts and removes), ``unknown_product``
    (the model has no views of the event's product in its window: a product new to the model,
    or a catalogue product nobody viewed then; both get the same neutral features),
    ``unknown_category`` (the event names a category the model does not know) and
    ``session_length`` (events in the session so far, this one included). Per scored row: every
    model feature of :data:`~worker.core.features.FEATURE_NAMES`, on the candidates the worker
    scores -- all of them, not only the top one: the model sees every candidate row, and the top
    one depends on the model itself (the reference would have to be scored too, and a shifted
    model output would read as input drift). At most ``max_rows`` rows per batch are drawn at
    random (with replacement) and binned, so the cost per batch does not grow with its size.

Reference
    :class:`ReferenceProfile`: per numeric quantity, bin edges at the deciles of the reference
    values (ties merged, so a feature with few values gets one bin per value) and the expected
    proportion of every bin; per categorical quantity (``event_type``, the two shares), the
    expected proportion of every code. It is stored as JSON in the artifact's ``metadata.json``
    under ``drift_reference`` (:meth:`ReferenceProfile.to_json`). :func:`build_reference` makes
    it from arrays; :func:`reference_by_replay` replays events through the serving pipeline
    (:class:`~worker.core.pipeline.Recommender`, no model) and collects them.

Population stability index
    ``PSI = sum_i (o_i - e_i) * ln(o_i / e_i)`` over the bins, with observed and expected
    proportions floored at :data:`EPSILON` (an empty bin would make it infinite). It is 0 for
    identical distributions, never negative, and symmetric in ``o`` and ``e`` (it is the sum of
    the two Kullback-Leibler divergences). The usual reading: below :data:`PSI_MODERATE` (0.1)
    no shift, 0.1 to :data:`PSI_SIGNIFICANT` (0.25) a moderate one, above 0.25 a significant
    one. The two binary quantities floor both shares at :data:`SHARE_FLOOR` (1 %) instead: a
    model trained when every product was known would otherwise call 0.5 % of events on new
    products a moderate shift; 5 % reads 0.066, 20 % 0.61.

Rolling window
    :class:`DriftTracker` keeps per quantity a ring of per-time-bucket counts (``window_s``
    split into buckets of ``bucket_s``); :meth:`DriftTracker.advance` moves to the bucket of the
    given time and empties the buckets that fall out of the window, so old observations leave
    it. PSI is reported only once the window holds ``min_events`` events.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.core.features import FEATURE_NAMES, SessionBatch
from worker.core.live_catalogue import LiveCatalogue
from worker.core.pipeline import BatchEntry, Recommender, advance_entries
from worker.core.records import EVENT_TYPES, BrowsingEvent
from worker.core.session import SessionStore

#: PSI above which a shift is called moderate, and significant (the alert's threshold).
PSI_MODERATE = 0.1
PSI_SIGNIFICANT = 0.25
#: Floor of observed and expected proportions in the PSI (empty bins).
EPSILON = 1e-4
#: Floor of the expected share of the binary quantities' rarer value.
SHARE_FLOOR = 0.01
DEFAULT_BINS = 10
#: Feature rows binned per batch at most.
DEFAULT_MAX_ROWS = 256
DEFAULT_WINDOW_S = 900.0
DEFAULT_BUCKET_S = 60.0
DEFAULT_MIN_EVENTS = 1000
REFERENCE_FORMAT = 1

EVENT_QUANTITIES: tuple[str, ...] = (
    "event_type",
    "unknown_product",
    "unknown_category",
    "session_length",
)
QUANTITIES: tuple[str, ...] = EVENT_QUANTITIES + tuple(FEATURE_NAMES)


def psi(expected: np.ndarray, observed: np.ndarray, eps: float = EPSILON) -> float:
    """Population stability index of ``observed`` against ``expected``: proportions (or counts,
    normalised here) over the same bins, each floored at ``eps``; 0 if either is all zero."""
    e = np.asarray(expected, dtype=np.float64)
    o = np.asarray(observed, dtype=np.float64)
    e_total, o_total = e.sum(), o.sum()
    if e_total <= 0 or o_total <= 0:
        return 0.0
    e = np.maximum(e / e_total, eps)
    o = np.maximum(o / o_total, eps)
    return float(np.sum((o - e) * np.log(o / e)))


@dataclass(frozen=True)
class QuantityReference:
    """The reference distribution of one quantity.

    Attributes:
        expected: proportion of every bin (sums to 1).
        edges: numeric quantities: the bins' upper edges, increasing; bin ``i`` holds the values
            ``edges[i-1] < x <= edges[i]``, the last bin those above every edge. None for a
            categorical quantity, whose bins are the codes ``0 .. len(expected)-1``.
        floor: floor of the expected and observed proportions in the PSI.
    """

    expected: np.ndarray
    edges: np.ndarray | None = None
    floor: float = EPSILON

    @property
    def n_bins(self) -> int:
        return int(self.expected.shape[0])

    def bins(self, values: np.ndarray) -> np.ndarray:
        """Bin index of every value (codes out of range go to the nearest bin)."""
        if self.edges is None:
            return np.clip(np.asarray(values, dtype=np.int64), 0, self.n_bins - 1)
        return np.searchsorted(self.edges, np.asarray(values, dtype=np.float64), side="left")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"expected": [round(float(p), 8) for p in self.expected]}
        if self.edges is not None:
            out["edges"] = [float(e) for e in self.edges]
        if self.floor != EPSILON:
            out["floor"] = self.floor
        return out

    def psi(self, observed: np.ndarray) -> float:
        """PSI of observed counts (or proportions) per bin against the expected ones."""
        return psi(self.expected, observed, self.floor)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> QuantityReference:
        expected = np.asarray(data["expected"], dtype=np.float64)
        edges = data.get("edges")
        if expected.ndim != 1 or expected.size == 0 or expected.sum() <= 0:
            raise ValueError(f"bad expected proportions {data['expected']!r}")
        edge_array = None if edges is None else np.asarray(edges, dtype=np.float64)
        if edge_array is not None and edge_array.shape != (expected.size - 1,):
            raise ValueError(f"{expected.size} bins need {expected.size - 1} edges, not {edges!r}")
        return cls(expected / expected.sum(), edge_array, float(data.get("floor", EPSILON)))


def numeric_reference(values: np.ndarray, n_bins: int = DEFAULT_BINS) -> QuantityReference:
    """Bins at the quantiles of ``values`` (observed values, so a discrete feature gets one bin
    per value; ties merged) and their proportions."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return QuantityReference(np.ones(1), np.zeros(0))
    inner = np.quantile(v, np.linspace(0.0, 1.0, n_bins + 1)[1:-1], method="inverted_cdf")
    edges = np.unique(inner)
    counts = np.bincount(np.searchsorted(edges, v, side="left"), minlength=edges.size + 1)
    return QuantityReference(_floored(counts, EPSILON), edges)


def categorical_reference(
    codes: np.ndarray, n_codes: int, floor: float = EPSILON
) -> QuantityReference:
    """Proportion of every code ``0 .. n_codes-1``, each at least ``floor``."""
    counts = np.bincount(np.asarray(codes, dtype=np.int64), minlength=n_codes)[:n_codes]
    return QuantityReference(_floored(counts, floor), floor=floor)


def _floored(counts: np.ndarray, floor: float) -> np.ndarray:
    p = counts.astype(np.float64) / max(1, int(counts.sum()))
    if counts.sum() == 0:
        p = np.full(counts.shape, 1.0 / counts.size)
    p = np.maximum(p, floor)
    normalised: np.ndarray = p / p.sum()
    return normalised


@dataclass(frozen=True)
class ReferenceProfile:
    """Reference distributions of the drift quantities (see the module docstring)."""

    quantities: dict[str, QuantityReference]
    events: int = 0
    rows: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "format": REFERENCE_FORMAT,
            "events": self.events,
            "rows": self.rows,
            "quantities": {name: q.to_json() for name, q in self.quantities.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReferenceProfile:
        """Raises: ValueError: not a reference profile this code reads."""
        if data.get("format") != REFERENCE_FORMAT:
            raise ValueError(
                f"drift reference format {data.get('format')!r}, not {REFERENCE_FORMAT}"
            )
        return cls(
            {name: QuantityReference.from_json(q) for name, q in data["quantities"].items()},
            int(data.get("events", 0)),
            int(data.get("rows", 0)),
        )


def build_reference(
    event_types: np.ndarray,
    unknown_product: np.ndarray,
    unknown_category: np.ndarray,
    session_length: np.ndarray,
    features: np.ndarray,
    *,
    feature_names: Sequence[str] = FEATURE_NAMES,
    n_bins: int = DEFAULT_BINS,
) -> ReferenceProfile:
    """The reference profile of a sample of events and of feature rows.

    Args:
        event_types: codes of :data:`~worker.core.records.EVENT_TYPES`, one per event.
        unknown_product / unknown_category: bool per event (see the module docstring).
        session_length: events in the session so far, per event.
        features: ``(rows, len(feature_names))`` feature rows of scored candidates.
    """
    quantities = {
        "event_type": categorical_reference(event_types, len(EVENT_TYPES)),
        "unknown_product": categorical_reference(unknown_product, 2, SHARE_FLOOR),
        "unknown_category": categorical_reference(unknown_category, 2, SHARE_FLOOR),
        "session_length": numeric_reference(session_length, n_bins),
    }
    for column, name in enumerate(feature_names):
        quantities[name] = numeric_reference(features[:, column], n_bins)
    return ReferenceProfile(quantities, int(np.asarray(event_types).size), int(features.shape[0]))


def event_quantities(batch: SessionBatch, live: LiveCatalogue) -> dict[str, np.ndarray]:
    """The per-event quantities of a batch (its sessions right after each event)."""
    cur = batch.current_item
    return {
        "event_type": batch.current_type.astype(np.int64),
        "unknown_product": (live.log_pop[cur] == 0).astype(np.int64),
        "unknown_category": (live.category[cur] == live.unknown_category).astype(np.int64),
        "session_length": batch.n_events,
    }


def _sample_rows(features: np.ndarray, max_rows: int, rng: np.random.Generator) -> np.ndarray:
    n = features.shape[0]
    if n <= max_rows:
        return features
    return features[rng.integers(0, n, max_rows)]


class ReferenceCollector:
    """Collects what :func:`build_reference` needs from batches (a
    :class:`~worker.core.pipeline.BatchObserver` of a replay)."""

    def __init__(self, *, max_rows: int = DEFAULT_MAX_ROWS, seed: int = 0) -> None:
        self.max_rows = max_rows
        self._rng = np.random.default_rng(seed)
        self._events: dict[str, list[np.ndarray]] = {q: [] for q in EVENT_QUANTITIES}
        self._rows: list[np.ndarray] = []

    def observe(self, batch: SessionBatch, features: np.ndarray, live: LiveCatalogue) -> None:
        for name, values in event_quantities(batch, live).items():
            self._events[name].append(values)
        self._rows.append(_sample_rows(features, self.max_rows, self._rng))

    def profile(self, n_bins: int = DEFAULT_BINS) -> ReferenceProfile:
        def joined(name: str) -> np.ndarray:
            parts = self._events[name]
            return np.concatenate(parts) if parts else np.zeros(0, np.int64)

        rows = (
            np.concatenate(self._rows)
            if self._rows
            else np.zeros((0, len(FEATURE_NAMES)), np.float32)
        )
        return build_reference(
            joined("event_type"),
            joined("unknown_product"),
            joined("unknown_category"),
            joined("session_length"),
            rows,
            n_bins=n_bins,
        )


class _NoModel:
    """Scores nothing (a replay that only wants the features)."""

    def score(self, features: np.ndarray) -> np.ndarray:
        return np.zeros(features.shape[0], dtype=np.float64)


def reference_by_replay(
    tables: Any,
    events: Sequence[BrowsingEvent],
    items: np.ndarray,
    *,
    n_candidates: int = 50,
    history: int = 20,
    batch_events: int = 500,
    max_rows: int = DEFAULT_MAX_ROWS,
    n_bins: int = DEFAULT_BINS,
    seed: int = 0,
    collect_from: int = 0,
) -> ReferenceProfile:
    """The reference profile of ``events`` (time order) replayed through the serving pipeline
    with ``tables`` (a :class:`~worker.core.catalogue.CatalogueTables`): sessions, live
    catalogue and trending counts, candidates and features exactly as the worker builds them.

    Args:
        items: int ``(N,)`` catalogue index of every event's product.
        n_candidates / history: the worker's candidates per event and session history length.
        batch_events: events per replayed batch.
        collect_from: the profile is made of the events from this index on; the earlier ones
            only build the sessions and trending counts up (so that the first collected
            sessions are not cut short).
    """
    collector = ReferenceCollector(max_rows=max_rows, seed=seed)
    recommender = Recommender(tables, _NoModel(), n_candidates=n_candidates, drift=collector)
    sessions = SessionStore(history=history, max_users=10_000_000, idle_ttl_ms=1 << 62)
    item_list = np.asarray(items).tolist()
    live = recommender.live
    for lo in range(0, len(events), batch_events):
        hi = min(lo + batch_events, len(events))
        entries = [BatchEntry(events[i], item_list[i]) for i in range(lo, hi)]
        if hi <= collect_from:  # warm-up: sessions and trending counts only
            batch = advance_entries(sessions, entries)
            live.observe(batch.current_item, batch.current_type, batch.now_ms)
            continue
        if lo < collect_from:
            cut = collect_from - lo
            batch = advance_entries(sessions, entries[:cut])
            live.observe(batch.current_item, batch.current_type, batch.now_ms)
            entries = entries[cut:]
        recommender.recommend(sessions, entries)
    return collector.profile(n_bins)


class DriftTracker:
    """Rolling observed histograms of the drift quantities against a reference, and their PSI
    (a :class:`~worker.core.pipeline.BatchObserver` of the worker's recommender).

    Args:
        reference: the serving model's reference profile.
        window_s / bucket_s: the rolling window and its buckets (seconds of the caller's clock).
        max_rows: feature rows binned per batch at most (drawn at random).
        min_events: events the window must hold before :meth:`psi` reports anything.
    """

    def __init__(
        self,
        reference: ReferenceProfile,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        bucket_s: float = DEFAULT_BUCKET_S,
        max_rows: int = DEFAULT_MAX_ROWS,
        min_events: int = DEFAULT_MIN_EVENTS,
        seed: int = 0,
    ) -> None:
        if bucket_s <= 0 or window_s < bucket_s:
            raise ValueError(f"need 0 < bucket_s <= window_s, not {bucket_s}, {window_s}")
        self.reference = reference
        self.bucket_s = float(bucket_s)
        self.n_buckets = max(1, math.ceil(window_s / bucket_s))
        self.max_rows = max_rows
        self.min_events = min_events
        self._rng = np.random.default_rng(seed)
        names = [q for q in QUANTITIES if q in reference.quantities]
        self.names = names
        sizes = [reference.quantities[q].n_bins for q in names]
        self._offset = dict(zip(names, np.cumsum([0, *sizes[:-1]]).tolist(), strict=True))
        self._counts = np.zeros((self.n_buckets, int(sum(sizes))), dtype=np.int64)
        self._slot = 0
        self._bucket: int | None = None
        self._events = [q for q in EVENT_QUANTITIES if q in reference.quantities]
        # The features the reference has, binned together: edges padded with +inf.
        self._feature_columns = [
            c for c, name in enumerate(FEATURE_NAMES) if name in reference.quantities
        ]
        features = [FEATURE_NAMES[c] for c in self._feature_columns]
        width = max((reference.quantities[f].n_bins - 1 for f in features), default=0)
        self._edges = np.full((len(features), width), np.inf)
        for row, name in enumerate(features):
            edges = reference.quantities[name].edges
            if edges is None:
                raise ValueError(f"feature {name} needs bin edges in the reference")
            self._edges[row, : edges.size] = edges
        self._feature_offsets = np.asarray([self._offset[f] for f in features], dtype=np.int64)

    def advance(self, now_s: float) -> None:
        """Move to the bucket of ``now_s``, emptying those that leave the window."""
        bucket = math.floor(now_s / self.bucket_s)
        if self._bucket is None:
            self._bucket = bucket
            return
        steps = bucket - self._bucket
        if steps <= 0:
            return
        if steps >= self.n_buckets:
            self._counts[:] = 0
        else:
            for step in range(1, steps + 1):
                self._counts[(self._slot + step) % self.n_buckets] = 0
        self._slot = (self._slot + steps) % self.n_buckets
        self._bucket = bucket

    def observe(self, batch: SessionBatch, features: np.ndarray, live: LiveCatalogue) -> None:
        """Count a batch: its events' quantities and a sample of its feature rows."""
        self.observe_values(
            event_quantities(batch, live), _sample_rows(features, self.max_rows, self._rng)
        )

    def observe_values(
        self, per_event: Mapping[str, np.ndarray], feature_rows: np.ndarray | None = None
    ) -> None:
        """Count per-event quantity values and feature rows (``(rows, N_FEATURES)``)."""
        row = self._counts[self._slot]
        for name in self._events:
            values = per_event.get(name)
            if values is None or values.size == 0:
                continue
            q = self.reference.quantities[name]
            offset = self._offset[name]
            row[offset : offset + q.n_bins] += np.bincount(q.bins(values), minlength=q.n_bins)
        if feature_rows is None or feature_rows.shape[0] == 0 or not self._feature_columns:
            return
        x = feature_rows[:, self._feature_columns].astype(np.float64)  # (R, F)
        bins = (x[:, :, None] > self._edges[None, :, :]).sum(axis=2)  # (R, F)
        flat = (bins + self._feature_offsets[None, :]).ravel()
        row += np.bincount(flat, minlength=row.size)

    def window_counts(self, name: str) -> np.ndarray:
        """Observations of ``name`` per bin over the window."""
        q = self.reference.quantities[name]
        offset = self._offset[name]
        counts: np.ndarray = self._counts[:, offset : offset + q.n_bins].sum(axis=0)
        return counts

    @property
    def window_events(self) -> int:
        name = self._events[0] if self._events else None
        return int(self.window_counts(name).sum()) if name else 0

    def psi(self) -> dict[str, float]:
        """PSI of every quantity over the window; empty while it holds fewer than
        ``min_events`` events."""
        if self.window_events < self.min_events:
            return {}
        totals = self._counts.sum(axis=0)
        out = {}
        for name in self.names:
            q = self.reference.quantities[name]
            offset = self._offset[name]
            observed = totals[offset : offset + q.n_bins]
            if observed.sum() > 0:
                out[name] = q.psi(observed)
        return out


def crossings(
    previous: Mapping[str, float], current: Mapping[str, float], threshold: float
) -> Iterable[tuple[str, float, bool]]:
    """``(quantity, psi, above)`` for every quantity whose PSI crossed ``threshold`` (upwards:
    ``above`` True) since ``previous``; a quantity new in ``current`` counts as coming from 0."""
    for name, value in current.items():
        before = previous.get(name, 0.0) > threshold
        now = value > threshold
        if before != now:
            yield name, value, now
