"""AccuracyTracker's per-model-version figures (champion/challenger) against an independent
brute-force implementation of the definitions in the ``worker.core.accuracy`` docstring, the sum
properties that tie them to the pooled figures, hand-computed examples and the comparison.

Hypothesis example counts: 200 generated histories (two versions, each fed in one random
interleaving with closes and prunes along the way).
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import asdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.core.test_accuracy import (
    CATEGORY_TOP,
    MIN_MS,
    Shown,
    Viewed,
    brute_heuristic,
    feed,
    histories,
)
from worker.core.accuracy import (
    AccuracyTracker,
    PurchaseLine,
    ShownSuggestion,
    VersionCounts,
    WindowReport,
    compare_versions,
)

COUNTS = (
    "purchases",
    "attributed",
    "hits",
    "baseline_hits",
    "heuristic_hits",
    "discovery_lines",
    "discovery_hits",
    "events_answered",
)


def rate(num: float, den: int) -> float | None:
    return num / den if den else None


def brute_force_versions(
    shown: list[Shown],
    purchases: list[PurchaseLine],
    viewed: list[Viewed],
    *,
    k: int,
    attribution_window_ms: int,
    window_ms: int,
    baseline: list[str],
    category_top: dict[str, list[str]],
    session_lookback_ms: int,
) -> dict[int, dict[str, dict]]:
    """Per window start, per version: the window's figures and the cumulative ones, as
    :class:`VersionReport` fields, from the docstring's definitions over the whole input."""
    seen: set[tuple[str, str]] = set()
    by_user: dict[str, list[tuple[int, int, ShownSuggestion]]] = defaultdict(list)
    for position, item in enumerate(shown):
        key = (item.user_id, item.suggestion.suggestion_id)
        if key not in seen:
            seen.add(key)
            by_user[item.user_id].append((item.suggestion.event_time_ms, position, item.suggestion))

    def latest(user: str, t: int, back: int) -> ShownSuggestion | None:
        eligible = [e for e in by_user.get(user, []) if t - back <= e[0] <= t]
        return max(eligible, key=lambda e: (e[0], e[1]))[2] if eligible else None

    def session_before(user: str, s: ShownSuggestion) -> list:
        events = [
            (v.event.event_time_ms, position, v.event)
            for position, v in enumerate(viewed)
            if v.user_id == user
            and v.event.session_id == s.session_id
            and s.event_time_ms - session_lookback_ms <= v.event.event_time_ms <= s.event_time_ms
        ]
        return [e for _, _, e in sorted(events, key=lambda x: (x[0], x[1]), reverse=True)]

    def start_of(t: int) -> int:
        return (t // window_ms) * window_ms

    windows: dict[int, dict[str, dict]] = defaultdict(dict)

    def counts(start: int, version: str) -> dict:
        return windows[start].setdefault(
            version, {**dict.fromkeys(COUNTS, 0), "rr": 0.0, "bought": {}}
        )

    events_of: dict[int, set[str]] = defaultdict(set)
    for v in viewed:
        events_of[start_of(v.event.event_time_ms)].add(v.event.event_id)
    answered: dict[tuple[int, str], set[str]] = defaultdict(set)  # (window, version) -> ids
    for item in shown:
        s = item.suggestion
        answered[(start_of(s.event_time_ms), s.model_version)].add(s.event_id)
    for (start, version), ids in answered.items():
        n = len(ids & events_of.get(start, set()))
        if n:
            counts(start, version)["events_answered"] += n
    base = set(baseline[:k])
    for line in purchases:
        t, start = line.event_time_ms, start_of(line.event_time_ms)
        s = latest(line.user_id, t, attribution_window_ms)
        if s is None:
            fallback = latest(line.user_id, t, attribution_window_ms + session_lookback_ms)
            if fallback is not None:
                counts(start, fallback.model_version)["purchases"] += 1
            continue
        c = counts(start, s.model_version)
        top = s.products[:k]
        hit = line.product_id in top
        c["purchases"] += 1
        c["attributed"] += 1
        c["hits"] += hit
        c["rr"] += 1.0 / (top.index(line.product_id) + 1) if hit else 0.0
        c["baseline_hits"] += line.product_id in base
        session = session_before(line.user_id, s)
        if line.product_id not in {e.product_id for e in session}:
            c["discovery_lines"] += 1
            c["discovery_hits"] += hit
        c["heuristic_hits"] += line.product_id in brute_heuristic(
            session, category_top, baseline, k
        )
        c["bought"].setdefault(s.suggestion_id, (top, set()))[1].add(line.product_id)

    out: dict[int, dict[str, dict]] = {}
    cum: dict[str, dict[str, int]] = {}
    for start in sorted(
        set(windows) | set(events_of) | {start_of(p.event_time_ms) for p in purchases}
    ):
        for version, c in windows.get(start, {}).items():
            total = cum.setdefault(version, dict.fromkeys(COUNTS, 0))
            for key in COUNTS:
                total[key] += c[key]
        report = {}
        for version in sorted(cum):
            c = windows.get(start, {}).get(version) or {
                **dict.fromkeys(COUNTS, 0),
                "rr": 0.0,
                "bought": {},
            }
            t = cum[version]
            bought = c["bought"]
            report[version] = {
                "model_version": version,
                **{key: c[key] for key in COUNTS},
                "hit_rate_at_k": rate(c["hits"], c["attributed"]),
                "mrr_at_k": rate(c["rr"], c["attributed"]),
                "precision_at_k": rate(
                    sum(len(set(top) & b) / k for top, b in bought.values()), len(bought)
                ),
                "baseline_hit_rate_at_k": rate(c["baseline_hits"], c["attributed"]),
                "heuristic_hit_rate_at_k": rate(c["heuristic_hits"], c["attributed"]),
                "discovery_hit_rate_at_k": rate(c["discovery_hits"], c["discovery_lines"]),
                "purchase_coverage": rate(c["attributed"], c["purchases"]),
                **{f"cumulative_{key}": t[key] for key in COUNTS},
                "cumulative_hit_rate_at_k": rate(t["hits"], t["attributed"]),
                "cumulative_baseline_hit_rate_at_k": rate(t["baseline_hits"], t["attributed"]),
                "cumulative_heuristic_hit_rate_at_k": rate(t["heuristic_hits"], t["attributed"]),
                "cumulative_discovery_hit_rate_at_k": rate(
                    t["discovery_hits"], t["discovery_lines"]
                ),
                "cumulative_purchase_coverage": rate(t["attributed"], t["purchases"]),
            }
        out[start] = report
    return out


def approx(d: dict) -> dict:
    return {
        key: pytest.approx(v, rel=1e-12, abs=1e-15) if isinstance(v, float) else v
        for key, v in d.items()
    }


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=histories(),
    k=st.integers(1, 4),
    attribution_min=st.sampled_from([0, 1, 5, 30]),
    window_min=st.sampled_from([1, 3, 60]),
    seed=st.integers(0, 2**32 - 1),
    lookback_min=st.sampled_from([0, 2, 8, 60]),
)
def test_per_version_figures_match_brute_force_and_sum_to_the_pooled_ones(
    history, k, attribution_min, window_min, seed, lookback_min
) -> None:
    """200 histories over versions v1 and v2, any interleaving: each version's window and
    cumulative figures equal the definitions; the per-version attributed lines, hits, baseline,
    heuristic and discovery counts sum to the pooled ones, the per-version purchase lines to the
    pooled ones less the unversioned lines, and per-version answered events are at least the
    pooled ones (an event answered by both versions counts for both)."""
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
    expected = brute_force_versions(shown, purchases, viewed, **params)
    reports = feed(AccuracyTracker(**params), shown, purchases, random.Random(seed), viewed)
    assert [r.window_start_ms for r in reports] == sorted(expected)
    for r in reports:
        got = {v.model_version: asdict(v) for v in r.versions}
        assert got == {name: approx(e) for name, e in expected[r.window_start_ms].items()}
        for key in ("attributed", "hits", "baseline_hits", "heuristic_hits"):
            assert sum(getattr(v, key) for v in r.versions) == getattr(r, key), key
        for key in ("discovery_lines", "discovery_hits"):
            assert sum(getattr(v, key) for v in r.versions) == getattr(r, key), key
        assert sum(v.purchases for v in r.versions) <= r.purchases
        assert sum(v.events_answered for v in r.versions) >= r.events_answered
        assert sum(v.cumulative_attributed for v in r.versions) == r.cumulative_attributed
        assert set(r.model_versions) <= {v.model_version for v in r.versions}
    # Every line has a version when each purchasing user was shown a suggestion at most W + L
    # before the line: then the per-version lines sum to the pooled lines.
    if reports:
        last = reports[-1]
        versioned = sum(v.cumulative_purchases for v in last.versions)
        unversioned = sum(
            not any(
                s.user_id == p.user_id
                and p.event_time_ms - (attribution_min + lookback_min) * MIN_MS
                <= s.suggestion.event_time_ms
                <= p.event_time_ms
                for s in shown
            )
            for p in purchases
        )
        assert versioned + unversioned == last.cumulative_purchases == len(purchases)


def S(t_min: float, sid: str, version: str, products: tuple[str, ...] = ("a", "b")):
    return ShownSuggestion(int(t_min * MIN_MS), sid, version, products, "s1", f"e-{sid}")


def P(user: str, product: str, t_min: float) -> PurchaseLine:
    return PurchaseLine(user, product, int(t_min * MIN_MS), 0)


def hand_tracker() -> AccuracyTracker:
    return AccuracyTracker(
        k=2,
        attribution_window_ms=5 * MIN_MS,
        window_ms=60 * MIN_MS,
        baseline=["z", "a"],
        session_lookback_ms=10 * MIN_MS,
    )


def test_hand_computed_versions_and_the_fallback_for_unattributed_lines() -> None:
    """u1 on v1, u2 on v2. u1 buys a at 2 (hit, baseline hit) and c at 12 (no suggestion in
    the 5 min before; v1's at 0 is within 5 + 10 min: a v1 line, unattributed); u2 buys b at 21
    (hit) and z at 22 (miss, baseline hit), and x at 40 (latest suggestion at 20, more than 15
    min before: unversioned); u3 was never shown anything (unversioned)."""
    tracker = hand_tracker()
    tracker.add_suggestion("u1", S(0, "s1", "v1"))
    tracker.add_suggestion("u2", S(20, "s2", "v2"))
    for line in (
        P("u1", "a", 2),
        P("u1", "c", 12),
        P("u2", "b", 21),
        P("u2", "z", 22),
        P("u2", "x", 40),
        P("u3", "a", 3),
    ):
        tracker.add_purchase(line)
    (report,) = tracker.flush()
    assert report.purchases == 6 and report.attributed == 3 and report.hits == 2
    v1, v2 = report.versions
    assert (v1.model_version, v1.purchases, v1.attributed, v1.hits) == ("v1", 2, 1, 1)
    assert (v2.model_version, v2.purchases, v2.attributed, v2.hits) == ("v2", 2, 2, 1)
    assert v1.purchase_coverage == 0.5 and v2.purchase_coverage == 1.0
    assert v1.hit_rate_at_k == 1.0 and v2.hit_rate_at_k == 0.5
    assert v1.baseline_hit_rate_at_k == 1.0 and v2.baseline_hit_rate_at_k == 0.5
    assert v2.mrr_at_k == pytest.approx(0.25)  # b at rank 2 on one of two lines
    assert v2.precision_at_k == pytest.approx(0.5)  # s2's top {a, b} ∩ bought {b, z} / 2
    # No events read: nothing answered to count.
    assert v1.events_answered == v2.events_answered == 0
    assert (v1.cumulative_purchases, v2.cumulative_attributed) == (2, 2)
    c = report.version_comparison
    assert c is not None
    # v2 has more attributed lines: the champion.
    assert (c.champion, c.challenger) == ("v2", "v1")
    assert (c.champion_attributed, c.champion_hits) == (2, 1)
    assert (c.challenger_attributed, c.challenger_hits) == (1, 1)
    assert c.difference == pytest.approx(0.5)
    assert "challenger v1 1.000 on 1 vs champion v2 0.500 on 2" in c.statement
    # Named by the caller (LATEST), v1 is the champion.
    tracker = hand_tracker()
    tracker.champion = "v1"
    tracker.add_suggestion("u1", S(0, "s1", "v1"))
    tracker.add_suggestion("u2", S(20, "s2", "v2"))
    for line in (P("u1", "a", 2), P("u2", "b", 21), P("u2", "z", 22)):
        tracker.add_purchase(line)
    (named,) = tracker.flush()
    assert named.version_comparison is not None
    assert (named.version_comparison.champion, named.version_comparison.challenger) == ("v1", "v2")
    assert not c.significant


def test_events_answered_per_version() -> None:
    tracker = hand_tracker()
    from worker.core.accuracy import SessionEvent

    for n in range(3):
        tracker.add_event("u1", SessionEvent(n * MIN_MS, f"e-s{n}", "a", "c", "s1"))
    tracker.add_suggestion("u1", S(0, "s0", "v1"))
    tracker.add_suggestion("u1", S(1, "s1", "v2"))
    tracker.add_suggestion("u1", ShownSuggestion(MIN_MS, "s1-again", "v1", ("a",), "s1", "e-s1"))
    (report,) = tracker.flush()
    assert report.events == 3 and report.events_answered == 2
    by_name = {v.model_version: v for v in report.versions}
    # e-s1 was answered by both versions (a redelivery across a swap): it counts for both.
    assert by_name["v1"].events_answered == 2 and by_name["v2"].events_answered == 1
    assert by_name["v1"].purchases == 0 and by_name["v1"].purchase_coverage is None


def test_versions_without_lines_in_a_window_carry_their_cumulative_figures() -> None:
    tracker = hand_tracker()
    tracker.add_suggestion("u1", S(0, "s1", "v1"))
    tracker.add_suggestion("u2", S(61, "s2", "v2"))
    tracker.add_purchase(P("u1", "a", 1))
    tracker.add_purchase(P("u2", "a", 62))
    first, second = tracker.flush()
    assert [v.model_version for v in first.versions] == ["v1"]
    assert [v.model_version for v in second.versions] == ["v1", "v2"]
    v1 = second.versions[0]
    assert (v1.purchases, v1.hit_rate_at_k, v1.cumulative_hits, v1.cumulative_hit_rate_at_k) == (
        0,
        None,
        1,
        1.0,
    )


def test_resume_continues_the_per_version_counts() -> None:
    tracker = hand_tracker()
    tracker.resume(
        closed_before_ms=0,
        attributed=10,
        hits=4,
        baseline_hits=0,
        purchases=12,
        versions={"v1": VersionCounts(purchases=12, attributed=10, hits=4)},
    )
    tracker.add_suggestion("u1", S(0, "s1", "v1"))
    tracker.add_purchase(P("u1", "a", 1))
    (report,) = tracker.flush()
    (v1,) = report.versions
    assert (v1.cumulative_purchases, v1.cumulative_attributed, v1.cumulative_hits) == (13, 11, 5)
    assert report.cumulative_attributed == 11


def test_compare_versions_picks_the_pair_and_the_champion() -> None:
    a, b, c = (100, 10), (300, 60), (0, 0)
    # Two versions with lines: the one with more lines is the champion...
    got = compare_versions({"a": a, "b": b, "c": c}, windows=3)
    assert got is not None and (got.champion, got.challenger) == ("b", "a")
    assert got.difference == pytest.approx(0.1 - 0.2)
    assert got.significant and got.p_value < 0.05 and got.windows == 3
    assert "over 3 windows both served" in got.statement
    assert "challenger a 0.100 on 100 vs champion b 0.200 on 300" in got.statement
    # ... unless the caller names it.
    got = compare_versions({"a": a, "b": b}, champion="a")
    assert got is not None and (got.champion, got.challenger) == ("a", "b")
    # Three versions with lines: only a named pair is compared.
    d = (50, 5)
    assert compare_versions({"a": a, "b": b, "d": d}) is None
    assert compare_versions({"a": a, "b": b, "d": d}, champion="b") is None
    got = compare_versions({"a": a, "b": b, "d": d}, champion="b", challenger="d")
    assert got is not None and (got.champion, got.challenger) == ("b", "d")
    # One version, or a named challenger without lines: no pair.
    assert compare_versions({"a": a}) is None
    got = compare_versions({"a": a, "b": b, "c": c}, champion="a", challenger="c")
    assert got is not None and (got.champion, got.challenger) == ("a", "b")


def test_a_small_difference_on_few_lines_is_not_significant() -> None:
    got = compare_versions({"v1": (40, 8), "v2": (35, 9)})
    assert got is not None and not got.significant
    assert "not enough evidence yet" in got.statement


def _serve_window(tracker: AccuracyTracker, start_min: int, hits: dict[str, tuple[int, int]]):
    """In the window starting at ``start_min``, each version ``v`` gets ``hits[v] = (lines,
    hits)``: that many users shown ("a",) by ``v``, of whom ``hits`` buy "a" and the rest "z"."""
    n = 0
    for version, (lines, hit) in hits.items():
        for i in range(lines):
            user = f"{version}-{start_min}-{i}"
            t = start_min + 1
            tracker.add_suggestion(user, S(t, f"s-{user}", version))
            tracker.add_purchase(P(user, "a" if i < hit else "z", t + 1))
            n += 1
    return n


def test_the_comparison_counts_only_the_windows_both_versions_served() -> None:
    """v1 serves alone for two windows at a high hit rate (other traffic), then v1 and v2 serve
    together: the comparison is v1 against v2 over the shared windows only, and says so."""
    tracker = hand_tracker()
    _serve_window(tracker, 0, {"v1": (10, 9)})
    _serve_window(tracker, 60, {"v1": (10, 9)})
    _serve_window(tracker, 120, {"v1": (10, 3), "v2": (10, 4)})
    _serve_window(tracker, 180, {"v1": (10, 3), "v2": (10, 4)})
    reports = tracker.flush()
    assert [r.version_comparison is None for r in reports] == [True, True, False, False]
    c = reports[-1].version_comparison
    assert c is not None and c.windows == 2
    assert (c.champion_attributed, c.champion_hits) == (20, 6)  # not 40 and 24
    assert (c.challenger_attributed, c.challenger_hits) == (20, 8)
    assert c.difference == pytest.approx(0.1)
    # The cumulative per-version figures still count everything.
    v1 = next(v for v in reports[-1].versions if v.model_version == "v1")
    assert (v1.cumulative_attributed, v1.cumulative_hits) == (40, 24)


def test_a_window_one_of_the_pair_did_not_serve_leaves_the_comparison_as_it_was() -> None:
    tracker = hand_tracker()
    tracker.champion, tracker.challenger = "v1", "v2"
    _serve_window(tracker, 0, {"v1": (10, 3), "v2": (10, 4)})
    _serve_window(tracker, 60, {"v1": (10, 10)})  # v2 paused: not head to head
    first, second = tracker.flush()
    assert first.version_comparison is not None and second.version_comparison is not None
    assert asdict(second.version_comparison) == asdict(first.version_comparison)


def test_a_new_pair_starts_from_zero_and_a_resumed_tracker_goes_on() -> None:
    """After a promotion the pair (v2, v3) is new: its comparison starts at its first shared
    window. A tracker resumed from a report's comparison continues its counts."""
    tracker = hand_tracker()
    tracker.champion, tracker.challenger = "v1", "v2"
    _serve_window(tracker, 0, {"v1": (10, 3), "v2": (10, 4)})
    tracker.champion, tracker.challenger = "v2", "v3"
    _serve_window(tracker, 60, {"v2": (10, 5), "v3": (10, 6)})
    first, second = tracker.flush()
    c = second.version_comparison
    assert c is not None and (c.champion, c.challenger, c.windows) == ("v2", "v3", 1)
    assert (c.champion_attributed, c.champion_hits) == (10, 5)

    resumed = hand_tracker()
    resumed.champion, resumed.challenger = "v2", "v3"
    resumed.resume(
        closed_before_ms=120 * MIN_MS,
        attributed=0,
        hits=0,
        baseline_hits=0,
        comparison=c,
    )
    _serve_window(resumed, 120, {"v2": (10, 5), "v3": (10, 6)})
    (third,) = resumed.flush()
    got = third.version_comparison
    assert got is not None and got.windows == 2
    assert (got.champion_attributed, got.champion_hits) == (20, 10)
    assert (got.challenger_attributed, got.challenger_hits) == (20, 12)


def test_window_report_without_versions_has_no_comparison() -> None:
    report = WindowReport(0, 1, 1, 1, (), 0, 0, 0, 0, None, None, None, None, 0, None, None)
    assert report.to_avro(0)["versions"] == [] and report.to_avro(0)["version_comparison"] is None
