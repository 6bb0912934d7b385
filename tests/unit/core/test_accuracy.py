"""AccuracyTracker against an independent brute-force implementation of the definitions in the
``worker.core.accuracy`` module docstring, plus hand-computed examples.

Hypothesis example counts: 300 generated histories, each fed in one random interleaving of the
browsing event, suggestion and purchase streams (honest watermarks, closes and prunes along the
way); 200 histories for the properties of the live figures; 100 for the discovery property.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.core.accuracy import (
    VERSION_FIELDS,
    AccuracyTracker,
    PurchaseLine,
    SessionEvent,
    ShownSuggestion,
    WindowReport,
    heuristic_top,
)

INF = 1 << 62
MIN_MS = 60_000


@dataclass(frozen=True)
class Shown:
    """A suggestion as it appears on the suggestions stream."""

    user_id: str
    suggestion: ShownSuggestion


@dataclass(frozen=True)
class Viewed:
    """A browsing event as it appears on the events stream."""

    user_id: str
    event: SessionEvent


def brute_heuristic(
    session: list[SessionEvent],
    category_top: dict[str, list[str]],
    popular: list[str],
    k: int,
) -> list[str]:
    """ "Recency then category top", written out independently of ``heuristic_top``."""
    ranked: list[str] = []
    for e in session:  # most recent first
        if e.product_id not in ranked:
            ranked.append(e.product_id)
    if session and session[0].category_id is not None:
        ranked += [p for p in category_top.get(session[0].category_id, [])[:k] if p not in ranked]
    ranked += [p for p in popular[:k] if p not in ranked]
    return ranked[:k]


def brute_force_reports(
    shown: list[Shown],
    purchases: list[PurchaseLine],
    *,
    k: int,
    attribution_window_ms: int,
    window_ms: int,
    baseline: list[str],
    viewed: list[Viewed] = (),  # type: ignore[assignment]
    category_top: dict[str, list[str]] | None = None,
    session_lookback_ms: int = 3_600_000,
) -> list[dict]:
    """The docstring's definitions, computed directly over the whole input.

    ``shown`` and ``viewed`` are in stream order; a repeated suggestion_id is ignored. Among
    suggestions with the same event time the one later in the stream counts as the latest; among
    events with the same time, the one later in the stream is the more recent.
    """
    category_top = category_top or {}
    seen: set[tuple[str, str]] = set()
    by_user: dict[str, list[tuple[int, int, ShownSuggestion]]] = defaultdict(list)
    for position, item in enumerate(shown):
        key = (item.user_id, item.suggestion.suggestion_id)
        if key in seen:
            continue
        seen.add(key)
        by_user[item.user_id].append((item.suggestion.event_time_ms, position, item.suggestion))
    base = set(baseline[:k])

    def session_before(user: str, s: ShownSuggestion) -> list[SessionEvent]:
        events = [
            (v.event.event_time_ms, position, v.event)
            for position, v in enumerate(viewed)
            if v.user_id == user
            and v.event.session_id == s.session_id
            and s.event_time_ms - session_lookback_ms <= v.event.event_time_ms <= s.event_time_ms
        ]
        return [e for _, _, e in sorted(events, key=lambda x: (x[0], x[1]), reverse=True)]

    # Coverage of events: distinct ids read per window, and the ids a suggestion answered.
    events_of: dict[int, set[str]] = defaultdict(set)
    for v in viewed:
        events_of[(v.event.event_time_ms // window_ms) * window_ms].add(v.event.event_id)
    answered_of: dict[int, set[str]] = defaultdict(set)  # a suggestion has its event's time
    for item in shown:
        t = item.suggestion.event_time_ms
        answered_of[(t // window_ms) * window_ms].add(item.suggestion.event_id)

    windows: dict[int, list[tuple[PurchaseLine, ShownSuggestion | None]]] = defaultdict(list)
    for start in events_of:
        windows[start] = []
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
    cum = defaultdict(int)
    for start in sorted(windows):
        rows = windows[start]
        attributed_rows = [(line, s) for line, s in rows if s is not None]
        hits = baseline_hits = 0
        disc_lines = disc_hits = heur_hits = 0
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
            session = session_before(line.user_id, s)
            if line.product_id not in {e.product_id for e in session}:
                disc_lines += 1
                disc_hits += line.product_id in top
            heur_hits += line.product_id in brute_heuristic(session, category_top, baseline, k)
        n = len(attributed_rows)
        cum_attr += n
        cum_hits += hits
        cum_base += baseline_hits
        n_events = len(events_of[start])
        n_answered = len(events_of[start] & answered_of[start])
        for key, value in (
            ("purchases", len(rows)),
            ("disc_lines", disc_lines),
            ("disc_hits", disc_hits),
            ("heur_hits", heur_hits),
            ("events", n_events),
            ("answered", n_answered),
        ):
            cum[key] += value

        def rate(num: int, den: int) -> float | None:
            return num / den if den else None

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
                "purchase_coverage": rate(n, len(rows)),
                "discovery_lines": disc_lines,
                "discovery_hits": disc_hits,
                "discovery_hit_rate_at_k": rate(disc_hits, disc_lines),
                "heuristic_hits": heur_hits,
                "heuristic_hit_rate_at_k": rate(heur_hits, n),
                "events": n_events,
                "events_answered": n_answered,
                "event_coverage": rate(n_answered, n_events),
                "cumulative_purchases": cum["purchases"],
                "cumulative_purchase_coverage": rate(cum_attr, cum["purchases"]),
                "cumulative_discovery_lines": cum["disc_lines"],
                "cumulative_discovery_hits": cum["disc_hits"],
                "cumulative_discovery_hit_rate_at_k": rate(cum["disc_hits"], cum["disc_lines"]),
                "cumulative_heuristic_hits": cum["heur_hits"],
                "cumulative_heuristic_hit_rate_at_k": rate(cum["heur_hits"], cum_attr),
                "cumulative_events": cum["events"],
                "cumulative_events_answered": cum["answered"],
                "cumulative_event_coverage": rate(cum["answered"], cum["events"]),
            }
        )
    return reports


def as_dict(report: WindowReport) -> dict:
    """The pooled figures (the per-version ones are checked in test_accuracy_versions.py)."""
    return {
        name: getattr(report, name)
        for name in report.__dataclass_fields__
        if name not in VERSION_FIELDS
    }


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


SESSIONS = ["a", "b"]
CATEGORY = {p: f"c{i % 3}" for i, p in enumerate(PRODUCTS)}
CATEGORY_TOP = {"c0": ["p6", "p0", "p3"], "c1": ["p1", "p7"], "c2": ["p5", "p2", "p0", "p4"]}


@st.composite
def histories(draw: st.DrawFn):
    """Browsing events of a few users and sessions; suggestions answering some of them (and
    some with an event id no event has: the event was not read); purchases."""
    viewed = []
    for n in range(draw(st.integers(0, 14))):
        user = draw(st.sampled_from(USERS))
        product = draw(st.sampled_from(PRODUCTS))
        viewed.append(
            Viewed(
                user,
                SessionEvent(
                    event_time_ms=draw(times),
                    event_id=f"e{n}",
                    product_id=product,
                    category_id=draw(st.sampled_from([CATEGORY[product], None, "unknown"])),
                    session_id=draw(st.sampled_from(SESSIONS)),
                ),
            )
        )
    # Some events read twice (redelivered by the website's pipeline): counted once.
    if viewed:
        viewed += [viewed[i % len(viewed)] for i in draw(st.lists(st.integers(0, 20), max_size=3))]
    shown = []
    for n in range(draw(st.integers(0, 12))):
        answering = draw(st.sampled_from(viewed)) if viewed and draw(st.booleans()) else None
        user = answering.user_id if answering else draw(st.sampled_from(USERS))
        shown.append(
            Shown(
                user,
                ShownSuggestion(
                    event_time_ms=answering.event.event_time_ms if answering else draw(times),
                    suggestion_id=f"events/{PARTITION[user]}/{n}",
                    model_version=draw(st.sampled_from(["v1", "v2"])),
                    products=tuple(
                        draw(st.lists(st.sampled_from(PRODUCTS), unique=True, max_size=5))
                    ),
                    session_id=(
                        answering.event.session_id if answering else draw(st.sampled_from(SESSIONS))
                    ),
                    event_id=answering.event.event_id if answering else f"x{n}",
                ),
            )
        )
    purchases = [
        PurchaseLine(user, draw(st.sampled_from(PRODUCTS)), draw(times), PARTITION[user])
        for user in draw(st.lists(st.sampled_from(USERS), max_size=12))
    ]
    return shown, purchases, viewed


def feed(
    tracker: AccuracyTracker,
    shown: list[Shown],
    purchases: list[PurchaseLine],
    rnd: random.Random,
    viewed: list[Viewed] = (),  # type: ignore[assignment]
) -> list[WindowReport]:
    """Feed the three topics in one random interleaving, as the monitor would: each partition's
    stream in event-time order, watermarks that never claim more than has been read (a stream
    read to its end claims everything), windows closed and state pruned along the way; then
    +inf watermarks and flush."""
    streams: dict[tuple[str, int], list] = {(kind, p): [] for kind in "sep" for p in (0, 1)}
    for item in sorted(shown, key=lambda s: s.suggestion.event_time_ms):  # stable: keeps ties
        streams[("s", PARTITION[item.user_id])].append(item)
    for v in sorted(viewed, key=lambda v: v.event.event_time_ms):
        streams[("e", PARTITION[v.user_id])].append(v)
    for line in sorted(purchases, key=lambda p: p.event_time_ms):
        streams[("p", line.partition)].append(line)
    last: dict[tuple[str, int], int] = {}
    reports: list[WindowReport] = []

    def mark(kind: str, partition: int) -> int:
        # everything before the last time read is known (ties may still come)
        if not streams[(kind, partition)]:
            return INF
        return last.get((kind, partition), -INF) - 1

    while any(streams.values()):
        kind, partition = rnd.choice([key for key, items in streams.items() if items])
        item = streams[(kind, partition)].pop(0)
        if kind == "s":
            assert tracker.add_suggestion(item.user_id, item.suggestion)
            last[(kind, partition)] = item.suggestion.event_time_ms
        elif kind == "e":
            assert tracker.add_event(item.user_id, item.event)
            last[(kind, partition)] = item.event.event_time_ms
        else:
            assert tracker.add_purchase(item)
            last[(kind, partition)] = item.event_time_ms
        ready = {p: min(mark("s", p), mark("e", p)) for p in (0, 1)}
        tracker.evaluate_ready(ready)
        limit = min(mark(kind, p) for kind in "sep" for p in (0, 1))
        reports += tracker.close_windows(limit)
        before = min([mark("p", p) + 1 for p in (0, 1)] + [ready[p] + 1 for p in (0, 1)])
        tracker.prune(before)
    assert tracker.late_purchases == 0 and tracker.late_events == 0
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
    lookback_min=st.sampled_from([0, 2, 8, 60]),
)
def test_tracker_matches_brute_force_for_any_interleaving(
    history, k, attribution_min, window_min, seed, duplicate, lookback_min
) -> None:
    """300 histories: the per-window reports, the live figures included, equal the brute-force
    definitions whatever the interleaving of the three topics, and redelivered suggestions
    (same id) change nothing."""
    shown, purchases, viewed = history
    baseline = ["p3", "p1", "p6", "p0"]
    params = dict(
        k=k,
        attribution_window_ms=attribution_min * MIN_MS,
        window_ms=window_min * MIN_MS,
        baseline=baseline,
        category_top=CATEGORY_TOP,
        session_lookback_ms=lookback_min * MIN_MS,
    )
    expected = brute_force_reports(shown, purchases, viewed=viewed, **params)

    tracker = AccuracyTracker(**params)
    reports = feed(tracker, shown, purchases, random.Random(seed), viewed)
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
        for v in viewed:
            again.add_event(v.user_id, v.event)
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


# -- the live figures: discovery, heuristic, coverage --------------------------------------------


def _live_params(k: int, lookback_min: int) -> dict:
    return dict(
        k=k,
        attribution_window_ms=5 * MIN_MS,
        window_ms=3 * MIN_MS,
        baseline=["p3", "p1", "p6", "p0"],
        category_top=CATEGORY_TOP,
        session_lookback_ms=lookback_min * MIN_MS,
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=histories(),
    k=st.integers(1, 4),
    lookback_min=st.sampled_from([0, 2, 60]),
    seed=st.integers(0, 2**32 - 1),
)
def test_live_figures_properties(history, k, lookback_min, seed) -> None:
    """200 histories: discovery hits <= hits and <= discovery lines <= attributed lines; the
    heuristic's rate and the model's share their denominator (attributed lines); coverages
    are in [0, 1]; the cumulative counts are the sums of the windows'."""
    shown, purchases, viewed = history
    reports = feed(
        AccuracyTracker(**_live_params(k, lookback_min)),
        shown,
        purchases,
        random.Random(seed),
        viewed,
    )
    for r in reports:
        assert r.discovery_hits <= r.hits and r.discovery_hits <= r.discovery_lines
        assert r.discovery_lines <= r.attributed <= r.purchases
        assert r.heuristic_hits <= r.attributed and r.events_answered <= r.events
        assert (r.heuristic_hit_rate_at_k is None) == (r.hit_rate_at_k is None)
        if r.attributed:
            assert r.heuristic_hit_rate_at_k == r.heuristic_hits / r.attributed
            assert r.hit_rate_at_k == r.hits / r.attributed
        for rate in (
            r.purchase_coverage,
            r.event_coverage,
            r.cumulative_purchase_coverage,
            r.cumulative_event_coverage,
            r.discovery_hit_rate_at_k,
            r.heuristic_hit_rate_at_k,
        ):
            assert rate is None or 0.0 <= rate <= 1.0
    if reports:
        last = reports[-1]
        assert last.cumulative_purchases == sum(r.purchases for r in reports)
        assert last.cumulative_discovery_lines == sum(r.discovery_lines for r in reports)
        assert last.cumulative_discovery_hits == sum(r.discovery_hits for r in reports)
        assert last.cumulative_heuristic_hits == sum(r.heuristic_hits for r in reports)
        assert last.cumulative_events == sum(r.events for r in reports)
        assert last.cumulative_events_answered == sum(r.events_answered for r in reports)
    assert sum(r.events for r in reports) == len({v.event.event_id for v in viewed})


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=histories(),
    lookback_min=st.sampled_from([0, 2, 60]),
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_a_product_viewed_earlier_in_the_session_is_never_a_discovery(
    history, lookback_min, seed, data
) -> None:
    """100 histories: once every suggestion's session has viewed, at some time within the
    lookback before it, every product a purchase names, no line is a discovery line; the hits
    and the model's other figures do not change."""
    shown, purchases, viewed = history
    params = _live_params(3, lookback_min)
    before = feed(AccuracyTracker(**params), shown, purchases, random.Random(seed), viewed)
    bought = sorted({line.product_id for line in purchases})
    extra = []
    for item in shown:
        s = item.suggestion
        for product in bought:
            t = s.event_time_ms - data.draw(st.integers(0, lookback_min)) * MIN_MS
            extra.append(
                Viewed(
                    item.user_id,
                    SessionEvent(t, f"v-{s.suggestion_id}-{product}", product, None, s.session_id),
                )
            )
    after = feed(AccuracyTracker(**params), shown, purchases, random.Random(seed), viewed + extra)
    assert all(r.discovery_lines == 0 and r.discovery_hits == 0 for r in after)
    assert all(r.discovery_hit_rate_at_k is None for r in after)
    model = ("purchases", "attributed", "hits", "baseline_hits", "mrr_at_k", "precision_at_k")
    by_start = {r.window_start_ms: r for r in after}
    for r in before:
        assert all(getattr(r, f) == getattr(by_start[r.window_start_ms], f) for f in model)


def E(t_min: float, eid: str, product: str, session: str = "s", category: str | None = None):
    return SessionEvent(int(t_min * MIN_MS), eid, product, category, session)


def test_hand_computed_live_figures() -> None:
    """K=3, W=10 min, L=20 min, one 60-min window; category tops c1 = [t1, t2, t3]; popular
    [g1, g2, g3].

    u1's events in session "s": a at 1 min (c1), b at 2 min (c9), a again at 3 min (c1) (e3);
    in session "o": c at 2.5 min. A suggestion s1 answers e3 at 3 min: [x, b, y].
      u1 buys b at 4 min -> s1, hit; b viewed in the session: not a discovery line. Heuristic
        at s1: recency a, b; then c1's top t1 -> [a, b, t1]: b is a heuristic hit.
      u1 buys y at 5 min -> s1, hit, a discovery hit (y never viewed); heuristic miss.
      u1 buys c at 6 min -> s1, miss; c was viewed in session "o" only: a discovery line.
      u4 buys g1 at 7 min -> no suggestion: unattributed.
    u2's events: e5 at 6 min with suggestion s2 (its session has no event in the lookback but
    itself, category unknown to the tops) answering it; e6 at 8 min unanswered; e5 read twice.
      u2 buys g1 at 8 min -> s2 [z]: miss, discovery line; heuristic [w, g1, g2]: hit.
    A suggestion answering e404, an event never read, counts nowhere.

    purchases 5, attributed 4 (coverage 4/5), hits 2, discovery lines 3 (y, c, g1), discovery
    hits 1, heuristic hits 2 (b, g1); events {e1, e2, e3, e4, e5, e6} = 6, answered {e3, e5}.
    """
    tracker = AccuracyTracker(
        k=3,
        attribution_window_ms=10 * MIN_MS,
        window_ms=60 * MIN_MS,
        baseline=["g1", "g2", "g3"],
        category_top={"c1": ["t1", "t2", "t3", "t4"]},
        session_lookback_ms=20 * MIN_MS,
    )
    for event in (
        E(1, "e1", "a", category="c1"),
        E(2, "e2", "b", category="c9"),
        E(2.5, "e4", "c", session="o"),
        E(3, "e3", "a", category="c1"),
    ):
        assert tracker.add_event("u1", event)
    for event in (E(6, "e5", "w", category="c7"), E(8, "e6", "w"), E(6, "e5", "w", category="c7")):
        assert tracker.add_event("u2", event)
    tracker.add_suggestion(
        "u1", ShownSuggestion(3 * MIN_MS, "s1", "v1", ("x", "b", "y"), "s", "e3")
    )
    tracker.add_suggestion("u2", ShownSuggestion(6 * MIN_MS, "s2", "v1", ("z",), "s", "e5"))
    tracker.add_suggestion("u3", ShownSuggestion(6 * MIN_MS, "s3", "v1", ("z",), "s", "e404"))
    for line in [P("u1", "b", 4), P("u1", "y", 5), P("u1", "c", 6), P("u4", "g1", 7)]:
        tracker.add_purchase(line)
    tracker.add_purchase(P("u2", "g1", 8))
    (r,) = tracker.flush()
    assert (r.purchases, r.attributed, r.hits) == (5, 3 + 1, 2)
    assert r.purchase_coverage == pytest.approx(4 / 5)
    assert (r.discovery_lines, r.discovery_hits) == (3, 1)
    assert r.discovery_hit_rate_at_k == pytest.approx(1 / 3)
    assert r.heuristic_hits == 2 and r.heuristic_hit_rate_at_k == pytest.approx(2 / 4)
    assert (r.events, r.events_answered) == (6, 2)
    assert r.event_coverage == pytest.approx(2 / 6)
    assert (r.cumulative_purchases, r.cumulative_events, r.cumulative_events_answered) == (5, 6, 2)
    avro = r.to_avro(emitted_time_ms=1)
    assert avro["discovery_hits"] == 1 and avro["event_coverage"] == pytest.approx(1 / 3)


def test_heuristic_top_order() -> None:
    """Session products most recent first without repeats, then the last event's category top,
    then popularity; a category without a top list goes straight to popularity."""
    session = [E(3, "3", "a", category="c1"), E(2, "2", "b"), E(1, "1", "a")]
    tops = {"c1": ["b", "t1", "t2"]}
    assert heuristic_top(session, tops, ["g1", "t1"], 4) == ["a", "b", "t1", "t2"]
    assert heuristic_top(session, tops, ["g1"], 2) == ["a", "b"]
    assert heuristic_top(session[1:], tops, ["g1", "a", "g2"], 3) == ["b", "a", "g1"]
    assert heuristic_top([], tops, ["g1", "g2"], 3) == ["g1", "g2"]


def test_events_after_their_window_closed_are_late_but_kept_for_sessions() -> None:
    """An event for a closed window is not counted (late) but still makes its product a
    viewed one for a later purchase's session."""
    tracker = AccuracyTracker(k=2, attribution_window_ms=10 * MIN_MS, window_ms=MIN_MS, baseline=[])
    tracker.add_event("u", E(0.5, "e0", "x"))
    assert [r.events for r in tracker.close_windows(2 * MIN_MS)] == [1]
    assert not tracker.add_event("u", E(0.7, "late", "y"))
    assert tracker.late_events == 1
    tracker.add_suggestion("u", ShownSuggestion(int(2.5 * MIN_MS), "s", "v", ("y",), "s", "e"))
    tracker.add_purchase(P("u", "y", 3))
    (r,) = tracker.flush()
    assert (r.attributed, r.hits, r.discovery_lines, r.events) == (1, 1, 0, 0)


def test_prune_keeps_what_a_pending_purchase_needs() -> None:
    """Pruning past a pending purchase's time keeps its suggestion and its session's events."""
    tracker = AccuracyTracker(
        k=1, attribution_window_ms=MIN_MS, window_ms=MIN_MS, baseline=[], session_lookback_ms=MIN_MS
    )
    tracker.add_event("u", E(0.5, "e", "x"))
    tracker.add_suggestion("u", ShownSuggestion(MIN_MS, "s", "v", ("x",), "s", "e"))
    tracker.add_purchase(P("u", "x", 1.5))
    tracker.prune(100 * MIN_MS)
    assert tracker.users == 1 and tracker.event_users == 1
    tracker.evaluate_ready({0: INF})
    tracker.prune(100 * MIN_MS)
    assert tracker.users == 0 and tracker.event_users == 0
    (r,) = [r for r in tracker.flush() if r.purchases]
    assert (r.hits, r.discovery_lines, r.heuristic_hits) == (1, 0, 1)
