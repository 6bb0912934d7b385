"""AccuracyTracker against an independent brute-force implementation of the definitions in the
``worker.core.accuracy`` module docstring, plus a hand-computed example.

Hypothesis example counts: 300 generated histories, each fed in one random interleaving of the
suggestion and purchase streams (honest watermarks, closes and prunes along the way).
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.core.accuracy import AccuracyTracker, PurchaseLine, ShownSuggestion, WindowReport

INF = 1 << 62
MIN_MS = 60_000


@dataclass(frozen=True)
class Shown:
    """A suggestion as it appears on the suggestions stream."""

    user_id: str
    suggestion: ShownSuggestion


def brute_force_reports(
    shown: list[Shown],
    purchases: list[PurchaseLine],
    *,
    k: int,
    attribution_window_ms: int,
    window_ms: int,
    baseline: list[str],
) -> list[dict]:
    """The docstring's definitions, computed directly over the whole input.

    ``shown`` is in stream order; a repeated suggestion_id is ignored. Among suggestions with the
    same event time the one later in the stream counts as the latest.
    """
    seen: set[tuple[str, str]] = set()
    by_user: dict[str, list[tuple[int, int, ShownSuggestion]]] = defaultdict(list)
    for position, item in enumerate(shown):
        key = (item.user_id, item.suggestion.suggestion_id)
        if key in seen:
            continue
        seen.add(key)
        by_user[item.user_id].append((item.suggestion.event_time_ms, position, item.suggestion))
    base = set(baseline[:k])

    windows: dict[int, list[tuple[PurchaseLine, ShownSuggestion | None]]] = defaultdict(list)
    for line in purchases:
        t = line.event_time_ms
        eligible = [
            (time, pos, s)
            for time, pos, s in by_user.get(line.user_id, [])
            if t - attribution_window_ms <= time <= t
        ]
        attributed = max(eligible, key=lambda e: (e[0], e[1]))[2] if eligible else None
        windows[(t // window_ms) * window_ms].append((line, attributed))

    reports = []
    cum_attr = cum_hits = cum_base = 0
    for start in sorted(windows):
        rows = windows[start]
        attributed_rows = [(line, s) for line, s in rows if s is not None]
        hits = baseline_hits = 0
        rr: list[float] = []
        bought: dict[str, tuple[tuple[str, ...], set[str]]] = {}
        for line, s in attributed_rows:
            top = s.products[:k]
            if line.product_id in top:
                hits += 1
                rr.append(1.0 / (top.index(line.product_id) + 1))
            else:
                rr.append(0.0)
            baseline_hits += line.product_id in base
            bought.setdefault(s.suggestion_id, (top, set()))[1].add(line.product_id)
        n = len(attributed_rows)
        cum_attr += n
        cum_hits += hits
        cum_base += baseline_hits
        reports.append(
            {
                "window_start_ms": start,
                "window_end_ms": start + window_ms,
                "k": k,
                "attribution_window_ms": attribution_window_ms,
                "model_versions": tuple(sorted({s.model_version for _, s in attributed_rows})),
                "purchases": len(rows),
                "attributed": n,
                "hits": hits,
                "baseline_hits": baseline_hits,
                "hit_rate_at_k": hits / n if n else None,
                "precision_at_k": (
                    sum(len(set(top) & b) / k for top, b in bought.values()) / len(bought)
                    if bought
                    else None
                ),
                "mrr_at_k": sum(rr) / n if n else None,
                "baseline_hit_rate_at_k": baseline_hits / n if n else None,
                "cumulative_attributed": cum_attr,
                "cumulative_hit_rate_at_k": cum_hits / cum_attr if cum_attr else None,
                "cumulative_baseline_hit_rate_at_k": cum_base / cum_attr if cum_attr else None,
            }
        )
    return reports


def as_dict(report: WindowReport) -> dict:
    return {name: getattr(report, name) for name in report.__dataclass_fields__}


def assert_reports_equal(got: list[WindowReport], expected: list[dict]) -> None:
    """Counts exactly; rates to 1e-12 (float sums may run in another order)."""
    assert [as_dict(r) for r in got] == [
        {
            key: (pytest.approx(v, rel=1e-12, abs=1e-15) if isinstance(v, float) else v)
            for key, v in e.items()
        }
        for e in expected
    ]


# -- generated histories ----------------------------------------------------------------------

USERS = ["u0", "u1", "u2", "u3"]
PRODUCTS = [f"p{i}" for i in range(8)]
PARTITION = {"u0": 0, "u1": 1, "u2": 0, "u3": 1}  # co-partitioned by user
times = st.integers(0, 40).map(lambda m: m * MIN_MS // 2)  # 0..20 min, many ties


@st.composite
def histories(draw: st.DrawFn):
    shown = []
    for n in range(draw(st.integers(0, 12))):
        user = draw(st.sampled_from(USERS))
        shown.append(
            Shown(
                user,
                ShownSuggestion(
                    event_time_ms=draw(times),
                    suggestion_id=f"events/{PARTITION[user]}/{n}",
                    model_version=draw(st.sampled_from(["v1", "v2"])),
                    products=tuple(
                        draw(st.lists(st.sampled_from(PRODUCTS), unique=True, max_size=5))
                    ),
                ),
            )
        )
    purchases = [
        PurchaseLine(user, draw(st.sampled_from(PRODUCTS)), draw(times), PARTITION[user])
        for user in draw(st.lists(st.sampled_from(USERS), max_size=12))
    ]
    return shown, purchases


def feed(
    tracker: AccuracyTracker, shown: list[Shown], purchases: list[PurchaseLine], rnd: random.Random
) -> list[WindowReport]:
    """Feed both topics in one random interleaving, as the monitor would: each partition's
    stream in event-time order, watermarks that never claim more than has been read, windows
    closed and suggestions pruned along the way; then +inf watermarks and flush."""
    streams: dict[tuple[str, int], list] = defaultdict(list)
    for item in sorted(shown, key=lambda s: s.suggestion.event_time_ms):  # stable: keeps ties
        streams[("s", PARTITION[item.user_id])].append(item)
    for line in sorted(purchases, key=lambda p: p.event_time_ms):
        streams[("p", line.partition)].append(line)
    purchase_partitions = {line.partition for line in purchases}
    suggestion_mark: dict[int, int] = {}
    purchase_mark: dict[int, int] = {}
    reports: list[WindowReport] = []

    while any(streams.values()):
        kind, partition = rnd.choice([key for key, items in streams.items() if items])
        item = streams[(kind, partition)].pop(0)
        if kind == "s":
            assert tracker.add_suggestion(item.user_id, item.suggestion)
            t = item.suggestion.event_time_ms
            # everything before t on this partition is known (ties may still come)
            suggestion_mark[partition] = max(suggestion_mark.get(partition, -INF), t - 1)
        else:
            assert tracker.add_purchase(item)
            purchase_mark[partition] = max(
                purchase_mark.get(partition, -INF), item.event_time_ms - 1
            )
        tracker.evaluate_ready(dict(suggestion_mark))
        purchase_wm = min((purchase_mark.get(p, -INF) for p in purchase_partitions), default=-INF)
        reports += tracker.close_windows(purchase_wm)
        before = min(
            [purchase_wm + 1] + [suggestion_mark.get(p, -INF) + 1 for p in purchase_partitions]
        )
        tracker.prune(before)
    assert tracker.late_purchases == 0
    tracker.evaluate_ready({0: INF, 1: INF})
    return reports + tracker.flush()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=histories(),
    k=st.integers(1, 4),
    attribution_min=st.sampled_from([0, 1, 5, 30]),
    window_min=st.sampled_from([1, 3, 60]),
    seed=st.integers(0, 2**32 - 1),
    duplicate=st.lists(st.integers(0, 11), max_size=4),
)
def test_tracker_matches_brute_force_for_any_interleaving(
    history, k, attribution_min, window_min, seed, duplicate
) -> None:
    """300 histories: the per-window reports equal the brute-force definitions whatever the
    interleaving of the two topics, and redelivered suggestions (same id) change nothing."""
    shown, purchases = history
    baseline = ["p3", "p1", "p6", "p0"]
    params = dict(
        k=k,
        attribution_window_ms=attribution_min * MIN_MS,
        window_ms=window_min * MIN_MS,
        baseline=baseline,
    )
    expected = brute_force_reports(shown, purchases, **params)

    tracker = AccuracyTracker(**params)
    reports = feed(tracker, shown, purchases, random.Random(seed))
    assert_reports_equal(reports, expected)

    # Redeliveries: suggestions seen again after their first delivery (same ids, as after a
    # worker crash under at-least-once) are refused and change nothing.
    if shown and duplicate:
        again = AccuracyTracker(**params)
        repeated = {index % len(shown) for index in duplicate}
        for index, item in enumerate(shown):
            assert again.add_suggestion(item.user_id, item.suggestion)
            if index in repeated:
                assert not again.add_suggestion(item.user_id, item.suggestion)
        for index in sorted(repeated):
            assert not again.add_suggestion(shown[index].user_id, shown[index].suggestion)
        for line in purchases:
            again.add_purchase(line)
        again.evaluate_ready({0: INF, 1: INF})
        assert_reports_equal(again.flush(), expected)


# -- hand-computed example --------------------------------------------------------------------


def S(t_min: float, sid: str, products: tuple[str, ...], version: str = "v1") -> ShownSuggestion:
    return ShownSuggestion(int(t_min * MIN_MS), sid, version, products)


def P(user: str, product: str, t_min: float) -> PurchaseLine:
    return PurchaseLine(user, product, int(t_min * MIN_MS), 0)


def test_hand_computed_example() -> None:
    """K=3, W=10 min, 60-min windows, baseline top-3 {q, a, zz} (e is 4th: not counted).

    Window [0, 60 min):
      u1 buys a at 5 min  -> latest suggestion s2 (3 min) [d a e]: hit at rank 2, baseline hit;
      u1 buys e at 5.2 min -> s2 again: hit at rank 3, not in baseline;
      u2 buys q at 18 min -> s3 (16 min) [x y z]: miss, baseline hit;
      u3 buys a at 1 min  -> no suggestion: unattributed;
      u1 buys d at 30 min -> s2 is 27 min old > W: unattributed.
      hit rate 2/3, MRR (1/2 + 1/3 + 0)/3 = 5/18, baseline 2/3,
      precision: s2 -> |{d,a,e} & {a,e}|/3 = 2/3, s3 -> 0; mean 1/3.
    Window [60, 120 min):
      u2 buys q at 62 min -> s4 (61 min) [q]: hit at rank 1, baseline hit.
      cumulative: 4 attributed, 3 hits, 3 baseline hits.
    """
    tracker = AccuracyTracker(
        k=3,
        attribution_window_ms=10 * MIN_MS,
        window_ms=60 * MIN_MS,
        baseline=["q", "a", "zz", "e"],
    )
    assert tracker.add_suggestion("u1", S(1, "s1", ("a", "b", "c")))
    assert tracker.add_suggestion("u1", S(3, "s2", ("d", "a", "e", "a2"), "v2"))  # cut to K
    assert tracker.add_suggestion("u2", S(16, "s3", ("x", "y", "z")))
    assert tracker.add_suggestion("u2", S(61, "s4", ("q",)))
    assert not tracker.add_suggestion("u1", S(3, "s2", ("d", "a", "e")))  # redelivery
    for line in [
        P("u1", "a", 5),
        P("u1", "e", 5.2),
        P("u2", "q", 18),
        P("u3", "a", 1),
        P("u1", "d", 30),
        P("u2", "q", 62),
    ]:
        assert tracker.add_purchase(line)
    assert tracker.evaluate_ready({0: 61 * MIN_MS}) == 5  # the 62-min line waits
    assert tracker.pending == 1
    first = tracker.close_windows(purchase_watermark_ms=70 * MIN_MS)
    assert len(first) == 1
    r = first[0]
    assert (r.window_start_ms, r.window_end_ms, r.k) == (0, 60 * MIN_MS, 3)
    assert (r.purchases, r.attributed, r.hits, r.baseline_hits) == (5, 3, 2, 2)
    assert r.hit_rate_at_k == pytest.approx(2 / 3)
    assert r.mrr_at_k == pytest.approx(5 / 18)
    assert r.precision_at_k == pytest.approx(1 / 3)
    assert r.baseline_hit_rate_at_k == pytest.approx(2 / 3)
    assert r.model_versions == ("v1", "v2")
    assert r.cumulative_attributed == 3

    # A purchase for the closed window is late: refused and counted.
    assert not tracker.add_purchase(P("u1", "a", 59))
    assert tracker.late_purchases == 1

    tracker.evaluate_ready({0: INF})
    (second,) = tracker.flush()
    assert (second.window_start_ms, second.purchases, second.attributed, second.hits) == (
        60 * MIN_MS,
        1,
        1,
        1,
    )
    assert second.hit_rate_at_k == 1.0 and second.mrr_at_k == 1.0
    assert second.precision_at_k == pytest.approx(1 / 3)
    assert second.baseline_hit_rate_at_k == 1.0
    assert second.cumulative_attributed == 4
    assert second.cumulative_hit_rate_at_k == pytest.approx(3 / 4)
    assert second.cumulative_baseline_hit_rate_at_k == pytest.approx(3 / 4)
    assert second.to_avro(emitted_time_ms=123)["emitted_time"] == 123


def test_window_without_attributed_lines_has_null_rates() -> None:
    """No attributed line: rates are None (null in the Avro record), counts are zero."""
    tracker = AccuracyTracker(k=2, attribution_window_ms=MIN_MS, window_ms=MIN_MS, baseline=[])
    tracker.add_purchase(P("u", "a", 0.5))
    (report,) = tracker.flush()
    assert (report.purchases, report.attributed) == (1, 0)
    assert report.hit_rate_at_k is None and report.precision_at_k is None
    assert report.mrr_at_k is None and report.baseline_hit_rate_at_k is None
    assert report.cumulative_hit_rate_at_k is None


def test_attribution_window_bounds_are_inclusive() -> None:
    """A suggestion exactly W before the purchase, or at the same instant, is attributable;
    one after the purchase is not."""
    tracker = AccuracyTracker(k=1, attribution_window_ms=MIN_MS, window_ms=60 * MIN_MS, baseline=[])
    tracker.add_suggestion("edge", S(1, "a", ("x",)))
    tracker.add_purchase(P("edge", "x", 2))
    tracker.add_suggestion("same", S(5, "b", ("y",)))
    tracker.add_purchase(P("same", "y", 5))
    tracker.add_suggestion("after", S(9, "c", ("z",)))
    tracker.add_purchase(P("after", "z", 8.99))
    (report,) = tracker.flush()
    assert (report.purchases, report.attributed, report.hits) == (3, 2, 2)


def test_lines_wait_for_their_partition_watermark() -> None:
    """A purchase is evaluated only when its partition's suggestions are known up to its time;
    a later suggestion then still counts, and its window stays open until then."""
    tracker = AccuracyTracker(k=1, attribution_window_ms=10 * MIN_MS, window_ms=MIN_MS, baseline=[])
    tracker.add_purchase(P("u", "x", 5))
    assert tracker.evaluate_ready({1: INF}) == 0  # another partition
    assert tracker.evaluate_ready({0: 5 * MIN_MS - 1}) == 0
    assert tracker.close_windows(purchase_watermark_ms=INF) == []  # pending line holds it
    tracker.add_suggestion("u", S(4, "late-arriving", ("x",)))
    assert tracker.evaluate_ready({0: 5 * MIN_MS}) == 1
    (report,) = tracker.close_windows(purchase_watermark_ms=INF)
    assert report.hits == 1


def test_invalid_parameters_are_rejected() -> None:
    """k and window must be positive, the attribution window non-negative."""
    for kwargs in ({"k": 0}, {"window_ms": 0}, {"attribution_window_ms": -1}):
        params = {"k": 1, "attribution_window_ms": 0, "window_ms": 1, "baseline": [], **kwargs}
        with pytest.raises(ValueError):
            AccuracyTracker(**params)
