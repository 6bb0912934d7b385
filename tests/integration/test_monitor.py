"""The monitor over the real broker: its per-window figures, the live ones (discovery, the
recency-then-category-top heuristic, coverage) included, equal a direct computation over the
same browsing event, suggestion and purchase records."""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict

import pytest

from tests.helpers import cli_args, produce, read_all, spawn
from worker.config import KafkaSettings
from worker.kafka.admin import ensure_topics
from worker.model.artifact import load_tables, read_metadata
from worker.wire.codec import codec_for

pytestmark = pytest.mark.kafka

K = 10
WINDOW_MS = 60_000
ATTRIBUTION_MS = 300_000


class _Log:
    def info(self, *a, **k):
        pass


def model_catalogue(models_dir) -> tuple[list[str], dict[str, str], dict[str, list[str]]]:
    """The served model's product ids, each one's category, and each category's K most viewed
    products (read here from the artifact's tables, independently of the monitor)."""
    tables = load_tables(models_dir)
    ids = [str(p) for p in tables.product_ids]
    names = [str(c) for c in tables.category_ids]
    category_of = {p: names[c] for p, c in zip(ids, tables.category.tolist(), strict=True)}
    tops = {
        names[c]: [ids[i] for i in row[:K] if i >= 0]
        for c, row in enumerate(tables.category_top.tolist())
    }
    return ids, category_of, tops


def synthetic_stream(baseline: list[str], models_dir, seed: int = 11, version_of=None):
    """Browsing events, suggestions and purchases of 40 users over 20 minutes ending 10 s ago,
    in two sessions per user. Most events are answered by a suggestion (same event_id, session
    and time), some not. Some purchases follow a suggestion of their product, some the popular
    list, some a product viewed earlier in the session, some the category's top list, some
    nothing in time. ``version_of(user_id)``: each user's model version (default: all m1)."""
    version_of = version_of or (lambda _user: "m1")
    rng = random.Random(seed)
    known, category_of, tops = model_catalogue(models_dir)
    products = rng.sample(known, 300) + [f"new-{i:03d}" for i in range(20)]  # cold starts too
    end = time.time_ns() // 1_000_000 - 10_000
    start = end - 20 * 60_000
    events, suggestions, purchases = [], [], []
    for u in range(40):
        user = f"user-{u}"
        times = sorted(rng.sample(range(start, end), 16))
        viewed: list[str] = []
        for i, t in enumerate(times):
            session = f"sess-{u}-{0 if i < 8 else 1}"
            if i == 8:
                viewed = []
            product = rng.choice(viewed) if viewed and rng.random() < 0.3 else rng.choice(products)
            viewed.append(product)
            events.append(
                {
                    "event_id": f"e-{u}-{i}",
                    "user_id": user,
                    "session_id": session,
                    "event_type": "VIEW",
                    "product_id": product,
                    "category_id": category_of.get(product, "c-new"),
                    "price": None,
                    "event_time": t,
                }
            )
            if rng.random() < 0.2:
                continue  # not answered
            shown = rng.sample(products, K)
            suggestions.append(
                {
                    "suggestion_id": f"s/{u}/{i}",
                    "user_id": user,
                    "session_id": session,
                    "event_id": f"e-{u}-{i}",
                    "source_topic": "events",
                    "source_partition": 0,
                    "source_offset": i,
                    "model_version": version_of(user),
                    "products": [
                        {"product_id": p, "rank": r + 1, "score": 1.0 - r / 100}
                        for r, p in enumerate(shown)
                    ],
                    "event_time": t,
                    "produced_time": t + 5,
                }
            )
            if rng.random() < 0.5:
                pick = rng.random()
                if pick < 0.3:
                    product = rng.choice(shown)
                elif pick < 0.45:
                    product = rng.choice(baseline[:K])
                elif pick < 0.6:
                    product = rng.choice(viewed)
                elif pick < 0.7:
                    product = rng.choice(tops.get(category_of.get(product, ""), products))
                else:
                    product = rng.choice(products)
                delay = rng.choice([1_000, 60_000, 200_000, 400_000])  # the last one is too late
                purchases.append(
                    {
                        "order_id": f"o-{u}-{i}",
                        "user_id": user,
                        "session_id": None,
                        "product_id": product,
                        "quantity": 1,
                        "price": None,
                        "event_time": min(t + delay, end),
                    }
                )
    return suggestions, purchases, events


def direct_computation(suggestions, purchases, baseline, events=(), category_top=None):
    """The metric definitions of the README, computed by brute force (every session event is
    within the default lookback of an hour: the stream spans 20 minutes)."""
    category_top = category_top or {}
    by_user = defaultdict(list)
    for s in suggestions:
        by_user[s["user_id"]].append(s)
    events_by_user = defaultdict(list)
    for e in events:
        events_by_user[e["user_id"]].append(e)
    windows: dict[int, dict] = {}

    def window(t: int) -> dict:
        return windows.setdefault(
            t - t % WINDOW_MS,
            {
                "purchases": 0,
                "attributed": 0,
                "hits": 0,
                "baseline_hits": 0,
                "rr": 0.0,
                "by_s": {},
                "discovery_lines": 0,
                "discovery_hits": 0,
                "heuristic_hits": 0,
                "event_ids": set(),
            },
        )

    for e in events:
        window(e["event_time"])["event_ids"].add(e["event_id"])
    answered = {s["event_id"] for s in suggestions}
    for p in purchases:
        t = p["event_time"]
        w = window(t)
        w["purchases"] += 1
        eligible = [s for s in by_user[p["user_id"]] if t - ATTRIBUTION_MS <= s["event_time"] <= t]
        if not eligible:
            continue
        s = max(eligible, key=lambda s: s["event_time"])
        top = [x["product_id"] for x in s["products"]][:K]
        w["attributed"] += 1
        if p["product_id"] in top:
            w["hits"] += 1
            w["rr"] += 1 / (top.index(p["product_id"]) + 1)
        w["baseline_hits"] += p["product_id"] in baseline[:K]
        w["by_s"].setdefault(s["suggestion_id"], (set(top), set()))[1].add(p["product_id"])
        session = sorted(
            (
                e
                for e in events_by_user[p["user_id"]]
                if e["session_id"] == s["session_id"] and e["event_time"] <= s["event_time"]
            ),
            key=lambda e: -e["event_time"],
        )
        if p["product_id"] not in {e["product_id"] for e in session}:
            w["discovery_lines"] += 1
            w["discovery_hits"] += p["product_id"] in top
        ranked: list[str] = []
        last_tops = category_top.get(session[0]["category_id"], []) if session else []
        for candidate in [e["product_id"] for e in session] + last_tops + baseline[:K]:
            if candidate not in ranked:
                ranked.append(candidate)
        w["heuristic_hits"] += p["product_id"] in ranked[:K]
    out = {}
    for start, w in windows.items():
        n = w["attributed"]
        n_events = len(w["event_ids"])
        n_answered = len(w["event_ids"] & answered)
        out[start] = {
            "purchases": w["purchases"],
            "attributed": n,
            "hits": w["hits"],
            "baseline_hits": w["baseline_hits"],
            "hit_rate_at_k": w["hits"] / n if n else None,
            "mrr_at_k": w["rr"] / n if n else None,
            "precision_at_k": (
                sum(len(top & bought) / K for top, bought in w["by_s"].values()) / len(w["by_s"])
            )
            if w["by_s"]
            else None,
            "purchase_coverage": n / w["purchases"] if w["purchases"] else None,
            "discovery_lines": w["discovery_lines"],
            "discovery_hits": w["discovery_hits"],
            "discovery_hit_rate_at_k": (
                w["discovery_hits"] / w["discovery_lines"] if w["discovery_lines"] else None
            ),
            "heuristic_hits": w["heuristic_hits"],
            "heuristic_hit_rate_at_k": w["heuristic_hits"] / n if n else None,
            "events": n_events,
            "events_answered": n_answered,
            "event_coverage": n_answered / n_events if n_events else None,
        }
    return out


LIVE_COUNTS = ("discovery_lines", "discovery_hits", "heuristic_hits", "events", "events_answered")
LIVE_RATES = (
    "purchase_coverage",
    "discovery_hit_rate_at_k",
    "heuristic_hit_rate_at_k",
    "event_coverage",
)


def test_monitor_reports_equal_a_direct_computation(
    kafka_bootstrap, topics, trained_models_dir, tmp_path
):
    ensure_topics(KafkaSettings(kafka_bootstrap), topics, _Log())
    baseline = read_metadata(trained_models_dir)["popular_top"]
    suggestions, purchases, events = synthetic_stream(baseline, trained_models_dir)
    s_codec, p_codec = codec_for("ProductSuggestion"), codec_for("PurchaseOutcome")
    e_codec = codec_for("BrowsingEvent")
    # Purchases first: the monitor must wait for the suggestions and the events, not race past
    # them.
    produce(
        kafka_bootstrap,
        [(topics.purchases, p["user_id"].encode(), p_codec.encode(p)) for p in purchases],
    )
    # Events last, one of them twice (redelivered by the website's pipeline: counted once).
    produce(
        kafka_bootstrap,
        [
            (topics.events, e["user_id"].encode(), e_codec.encode(e))
            for e in sorted(events, key=lambda e: e["event_time"]) + events[:3]
        ],
    )
    produce(
        kafka_bootstrap,
        [
            (topics.suggestions, s["user_id"].encode(), s_codec.encode(s))
            for s in sorted(suggestions, key=lambda s: s["event_time"])
        ],
    )
    # A redelivered duplicate must not count twice.
    produce(
        kafka_bootstrap,
        [(topics.suggestions, s["user_id"].encode(), s_codec.encode(s)) for s in suggestions[:20]],
    )
    monitor = spawn(
        [
            "monitor",
            *cli_args(kafka_bootstrap, topics),
            "--models-dir",
            str(trained_models_dir),
            "--group-id",
            "m",
            "--k",
            str(K),
            "--window-s",
            str(WINDOW_MS // 1000),
            "--attribution-window-s",
            str(ATTRIBUTION_MS // 1000),
            "--metrics-port",
            "0",
            "--exit-at-end",
        ],
        tmp_path / "monitor.log",
    )
    assert monitor.wait(timeout=120) == 0, (tmp_path / "monitor.log").read_text()[-3000:]
    codec = codec_for("AccuracyReport")
    reports = [codec.decode(m.value()) for m in read_all(kafka_bootstrap, topics.accuracy, 1)]
    tops = model_catalogue(trained_models_dir)[2]
    expected = direct_computation(suggestions, purchases, baseline, events, tops)
    assert sum(e["attributed"] for e in expected.values()) > 20, (
        "the stream must exercise attribution"
    )
    totals = {key: sum(e[key] for e in expected.values()) for key in LIVE_COUNTS}
    attributed = sum(e["attributed"] for e in expected.values())
    # The stream exercises every live figure both ways.
    assert 0 < totals["discovery_lines"] < attributed, totals
    assert 0 < totals["discovery_hits"] < totals["discovery_lines"], totals
    assert 0 < totals["heuristic_hits"] < attributed, totals
    assert 0 < totals["events_answered"] < totals["events"] == len(events), totals
    assert {r["window_start"] for r in reports} == set(expected)
    assert len(reports) == len(expected), "each window is reported once"
    for r in reports:
        e = expected[r["window_start"]]
        assert r["window_end"] - r["window_start"] == WINDOW_MS
        for key in ("purchases", "attributed", "hits", "baseline_hits", *LIVE_COUNTS):
            assert r[key] == e[key], (key, r, e)
        for key in ("hit_rate_at_k", "mrr_at_k", "precision_at_k", *LIVE_RATES):
            assert (r[key] is None) == (e[key] is None), (key, r, e)
            if e[key] is not None:
                assert r[key] == pytest.approx(e[key], abs=1e-12), (key, r, e)
    cumulative = sorted(reports, key=lambda r: r["window_start"])[-1]
    total_attr = sum(e["attributed"] for e in expected.values())
    assert cumulative["cumulative_attributed"] == total_attr
    assert cumulative["cumulative_hit_rate_at_k"] == pytest.approx(
        sum(e["hits"] for e in expected.values()) / total_attr
    )
    total_purchases = sum(e["purchases"] for e in expected.values())
    assert cumulative["cumulative_purchases"] == total_purchases == len(purchases)
    assert cumulative["cumulative_purchase_coverage"] == pytest.approx(total_attr / total_purchases)
    for key in LIVE_COUNTS:
        assert cumulative[f"cumulative_{key}"] == totals[key], key
    assert cumulative["cumulative_discovery_hit_rate_at_k"] == pytest.approx(
        totals["discovery_hits"] / totals["discovery_lines"]
    )
    assert cumulative["cumulative_heuristic_hit_rate_at_k"] == pytest.approx(
        totals["heuristic_hits"] / total_attr
    )
    assert cumulative["cumulative_event_coverage"] == pytest.approx(
        totals["events_answered"] / totals["events"]
    )
    # The log line carries them too.
    lines = [
        json.loads(line)
        for line in (tmp_path / "monitor.log").read_text().splitlines()
        if line.startswith("{") and '"accuracy_window"' in line
    ]
    assert len(lines) == len(reports)
    assert sum(line["discovery_hits"] for line in lines) == totals["discovery_hits"]
    assert sum(line["events_answered"] for line in lines) == totals["events_answered"]


def _run_monitor(kafka_bootstrap, topics, models_dir, log_path, *, exit_at_end: bool):
    return spawn(
        [
            "monitor",
            *cli_args(kafka_bootstrap, topics),
            "--models-dir",
            str(models_dir),
            "--group-id",
            "m",
            "--k",
            str(K),
            "--window-s",
            str(WINDOW_MS // 1000),
            "--attribution-window-s",
            str(ATTRIBUTION_MS // 1000),
            "--metrics-port",
            "0",
            *(["--exit-at-end"] if exit_at_end else []),
        ],
        log_path,
    )


def _produce_stream(bootstrap, topics, suggestions, purchases, events):
    s_codec, p_codec = codec_for("ProductSuggestion"), codec_for("PurchaseOutcome")
    e_codec = codec_for("BrowsingEvent")
    produce(
        bootstrap,
        [
            (topics.events, e["user_id"].encode(), e_codec.encode(e))
            for e in sorted(events, key=lambda e: e["event_time"])
        ],
    )
    produce(
        bootstrap,
        [
            (topics.suggestions, s["user_id"].encode(), s_codec.encode(s))
            for s in sorted(suggestions, key=lambda s: s["event_time"])
        ],
    )
    produce(
        bootstrap,
        [
            (topics.purchases, p["user_id"].encode(), p_codec.encode(p))
            for p in sorted(purchases, key=lambda p: p["event_time"])
        ],
    )


def _reports(bootstrap, topics):
    codec = codec_for("AccuracyReport")
    return [codec.decode(m.value()) for m in read_all(bootstrap, topics.accuracy, 1)]


def test_monitor_killed_mid_stream_and_restarted_reports_what_an_undisturbed_run_reports(
    kafka_bootstrap, trained_models_dir, tmp_path, request
):
    """kill -9 of the monitor after it reported the first half of the stream, then a restart
    over the second half: each window is reported once, with the figures and cumulative figures
    of an undisturbed run (the restarted monitor re-reads the suggestions it still needs)."""
    import signal
    import uuid

    from worker.config import TopicSettings

    def fresh_topics(tag: str) -> TopicSettings:
        suffix = f"{tag}-{uuid.uuid4().hex[:8]}"
        return TopicSettings(
            events=f"ev-{suffix}",
            suggestions=f"sg-{suffix}",
            purchases=f"pu-{suffix}",
            accuracy=f"acc-{suffix}",
            partitions=6,
        )

    baseline = read_metadata(trained_models_dir)["popular_top"]
    suggestions, purchases, events = synthetic_stream(
        baseline, trained_models_dir, seed=23, version_of=lambda u: f"m{int(u[5:]) % 2 + 1}"
    )
    times = sorted(p["event_time"] for p in purchases)
    middle = times[len(times) // 2]
    cut = middle - middle % WINDOW_MS  # a window boundary: no window spans both halves

    undisturbed = fresh_topics("a")
    ensure_topics(KafkaSettings(kafka_bootstrap), undisturbed, _Log())
    _produce_stream(kafka_bootstrap, undisturbed, suggestions, purchases, events)
    mon = _run_monitor(
        kafka_bootstrap, undisturbed, trained_models_dir, tmp_path / "a.log", exit_at_end=True
    )
    assert mon.wait(timeout=120) == 0
    expected = {r["window_start"]: r for r in _reports(kafka_bootstrap, undisturbed)}

    disturbed = fresh_topics("b")
    ensure_topics(KafkaSettings(kafka_bootstrap), disturbed, _Log())
    first = (
        [s for s in suggestions if s["event_time"] < cut],
        [p for p in purchases if p["event_time"] < cut],
        [e for e in events if e["event_time"] < cut],
    )
    second = (
        [s for s in suggestions if s["event_time"] >= cut],
        [p for p in purchases if p["event_time"] >= cut],
        [e for e in events if e["event_time"] >= cut],
    )
    _produce_stream(kafka_bootstrap, disturbed, *first)
    mon = _run_monitor(
        kafka_bootstrap, disturbed, trained_models_dir, tmp_path / "b1.log", exit_at_end=False
    )
    first_windows = {w for w in expected if w < cut}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if {r["window_start"] for r in _reports(kafka_bootstrap, disturbed)} >= first_windows:
            break
        time.sleep(1.0)
    mon.send_signal(signal.SIGKILL)
    mon.wait()
    _produce_stream(kafka_bootstrap, disturbed, *second)
    mon = _run_monitor(
        kafka_bootstrap, disturbed, trained_models_dir, tmp_path / "b2.log", exit_at_end=True
    )
    assert mon.wait(timeout=120) == 0, (tmp_path / "b2.log").read_text()[-3000:]

    got = _reports(kafka_bootstrap, disturbed)
    starts = [r["window_start"] for r in got]
    assert len(starts) == len(set(starts)), "a window was reported twice"
    assert set(starts) == set(expected)
    assert any(w < cut for w in starts) and any(w >= cut for w in starts)
    fields = (
        "purchases",
        "attributed",
        "hits",
        "baseline_hits",
        "hit_rate_at_k",
        "precision_at_k",
        "mrr_at_k",
        "cumulative_attributed",
        "cumulative_hit_rate_at_k",
        "cumulative_baseline_hit_rate_at_k",
        *LIVE_COUNTS,
        *LIVE_RATES,
        *(f"cumulative_{key}" for key in LIVE_COUNTS),
        "cumulative_purchases",
        "cumulative_purchase_coverage",
        "cumulative_discovery_hit_rate_at_k",
        "cumulative_heuristic_hit_rate_at_k",
        "cumulative_event_coverage",
    )
    for r in got:
        e = expected[r["window_start"]]
        for key in fields:
            assert (
                r[key] == pytest.approx(e[key], abs=1e-12) if e[key] is not None else r[key] is None
            ), (key, r, e)
        # The per-version figures, cumulative ones included, and the comparison too. (A window
        # closed before any m2 suggestion was seen lists m1 alone, in both runs.)
        assert [v["model_version"] for v in r["versions"]] == [
            v["model_version"] for v in e["versions"]
        ]
        for got_v, exp_v in zip(r["versions"], e["versions"], strict=True):
            assert got_v == approx_record(exp_v), (got_v, exp_v)
        assert (r["version_comparison"] is None) == (e["version_comparison"] is None)
        if e["version_comparison"] is not None:
            assert r["version_comparison"] == approx_record(e["version_comparison"])
    assert any([v["model_version"] for v in r["versions"]] == ["m1", "m2"] for r in got)


def approx_record(record: dict) -> dict:
    """Floats to 1e-12, everything else exactly."""
    return {
        k: pytest.approx(v, abs=1e-12) if isinstance(v, float) else v for k, v in record.items()
    }
