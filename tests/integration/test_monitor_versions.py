"""The monitor over the real broker with two model versions serving at once (each user stably on
one, as champion/challenger routing does): its per-version figures in the accuracy topic equal a
direct computation over each version's records, the pooled ones are unchanged, and its logs
carry the per-version figures and the two-proportion comparison of the cumulative hit rates."""

from __future__ import annotations

import json
import zlib

import pytest

from tests.helpers import read_all
from tests.integration.test_monitor import (
    LIVE_COUNTS,
    _Log,
    _produce_stream,
    _run_monitor,
    direct_computation,
    model_catalogue,
    synthetic_stream,
)
from worker.config import KafkaSettings
from worker.core.stats import compare_proportions
from worker.kafka.admin import ensure_topics
from worker.model.artifact import read_metadata
from worker.wire.codec import codec_for

pytestmark = pytest.mark.kafka

COUNTS = ("purchases", "attributed", "hits", "baseline_hits", *LIVE_COUNTS[:3])
RATES = (
    "hit_rate_at_k",
    "mrr_at_k",
    "precision_at_k",
    "purchase_coverage",
    "discovery_hit_rate_at_k",
    "heuristic_hit_rate_at_k",
)


def version_of(user_id: str) -> str:
    """A stable hash of the user id: about a third of the users on the challenger."""
    return "challenger" if zlib.crc32(user_id.encode()) % 3 == 0 else "champion"


def test_monitor_reports_per_version_figures_equal_a_direct_computation(
    kafka_bootstrap, topics, trained_models_dir, tmp_path
):
    ensure_topics(KafkaSettings(kafka_bootstrap), topics, _Log())
    baseline = read_metadata(trained_models_dir)["popular_top"]
    suggestions, purchases, events = synthetic_stream(
        baseline, trained_models_dir, seed=31, version_of=version_of
    )
    # Users never shown a suggestion: their lines have no version (pooled figures only).
    purchases += [
        {**p, "user_id": "nobody", "order_id": f"x-{p['order_id']}"} for p in purchases[:7]
    ]
    _produce_stream(kafka_bootstrap, topics, suggestions, purchases, events)
    mon = _run_monitor(
        kafka_bootstrap, topics, trained_models_dir, tmp_path / "monitor.log", exit_at_end=True
    )
    assert mon.wait(timeout=120) == 0, (tmp_path / "monitor.log").read_text()[-3000:]
    codec = codec_for("AccuracyReport")
    reports = sorted(
        (codec.decode(m.value()) for m in read_all(kafka_bootstrap, topics.accuracy, 1)),
        key=lambda r: r["window_start"],
    )
    tops = model_catalogue(trained_models_dir)[2]

    # Direct computation per version: a user's records are all of one version, attribution is
    # per user, and every suggestion is within W + L (5 min + 1 h) of any later line of the
    # 20-minute stream, so a version's lines are its users' lines that follow one of their
    # suggestions.
    def first_shown(user: str) -> int | None:
        times = [s["event_time"] for s in suggestions if s["user_id"] == user]
        return min(times) if times else None

    expected = {}
    for version in ("champion", "challenger"):
        mine = [s for s in suggestions if s["model_version"] == version]
        users = {s["user_id"] for s in mine}
        lines = [
            p
            for p in purchases
            if p["user_id"] in users and first_shown(p["user_id"]) <= p["event_time"]
        ]
        mine_events = [e for e in events if e["user_id"] in users]
        expected[version] = direct_computation(mine, lines, baseline, mine_events, tops)
    pooled = direct_computation(suggestions, purchases, baseline, events, tops)
    assert {r["window_start"] for r in reports} == set(pooled)

    totals = {v: dict.fromkeys(COUNTS + ("events_answered",), 0) for v in expected}
    for r in reports:
        assert r["purchases"] == pooled[r["window_start"]]["purchases"]  # pooled unchanged
        assert r["attributed"] == pooled[r["window_start"]]["attributed"]
        by_name = {v["model_version"]: v for v in r["versions"]}
        assert set(by_name) <= set(expected)
        for version, windows in expected.items():
            e = windows.get(r["window_start"])
            if e is None or (e["purchases"] == 0 and e["events_answered"] == 0):
                # No record of this version in the window (its users' events there, if any, all
                # went unanswered, and an event names no version): zero counts if it is listed,
                # and it is listed only once the monitor has seen it, which depends on how far
                # it had read when the window closed.
                if version in by_name:
                    for key in COUNTS:
                        assert by_name[version][key] == 0, (version, key)
                continue
            got = by_name[version]
            for key in COUNTS:
                assert got[key] == e[key], (version, key, got, e)
                totals[version][key] += e[key]
            assert got["events_answered"] == e["events_answered"], (version, got, e)
            totals[version]["events_answered"] += e["events_answered"]
            for key in RATES:
                assert (got[key] is None) == (e[key] is None), (version, key, got, e)
                if e[key] is not None:
                    assert got[key] == pytest.approx(e[key], abs=1e-12), (version, key)
            rate = e["baseline_hits"] / e["attributed"] if e["attributed"] else None
            assert got["baseline_hit_rate_at_k"] == pytest.approx(rate, abs=1e-12)
        # The per-version counts add up to the pooled ones (lines: less the unversioned).
        for key in ("attributed", "hits", "baseline_hits", *LIVE_COUNTS[:3]):
            assert sum(v[key] for v in r["versions"]) == r[key], key
        assert sum(v["purchases"] for v in r["versions"]) <= r["purchases"]

    last = reports[-1]
    assert [v["model_version"] for v in last["versions"]] == ["challenger", "champion"]
    for v in last["versions"]:
        t = totals[v["model_version"]]
        for key in COUNTS:
            assert v[f"cumulative_{key}"] == t[key], (key, v, t)
        assert v["cumulative_events_answered"] == t["events_answered"]
        assert v["cumulative_purchase_coverage"] == pytest.approx(t["attributed"] / t["purchases"])
    assert totals["challenger"]["attributed"] > 10 and totals["champion"]["attributed"] > 10
    unversioned = last["cumulative_purchases"] - sum(
        v["cumulative_purchases"] for v in last["versions"]
    )
    assert unversioned == 7

    # The comparison, head to head: over the windows in which both versions served (answered
    # events or had purchase lines). The trained directory's LATEST names neither version, so
    # the champion is the version with more attributed lines there.
    def served(version: str, start: int) -> bool:
        e = expected[version].get(start)
        return e is not None and (e["purchases"] > 0 or e["events_answered"] > 0)

    shared = [
        r["window_start"] for r in reports if all(served(v, r["window_start"]) for v in expected)
    ]
    assert shared, "the two versions never served in the same window"
    h2h = {
        v: {key: sum(expected[v][w][key] for w in shared) for key in ("attributed", "hits")}
        for v in expected
    }
    champion, challenger = sorted(h2h, key=lambda v: (-h2h[v]["attributed"], v))
    a, b = h2h[champion], h2h[challenger]
    result = compare_proportions(a["hits"], a["attributed"], b["hits"], b["attributed"])
    c = last["version_comparison"]
    assert (c["champion"], c["challenger"], c["windows"]) == (champion, challenger, len(shared))
    assert (c["champion_attributed"], c["challenger_hits"]) == (a["attributed"], b["hits"])
    assert c["p_value"] == pytest.approx(result.p_value)
    plural = "s" if len(shared) != 1 else ""
    assert c["statement"] == f"hit rate@K over {len(shared)} window{plural} both served: " + (
        result.statement(f"champion {champion}", f"challenger {challenger}")
    )

    # The logs: every accuracy_window line lists the versions; the last version_comparison
    # line states the comparison of the last report.
    log = [
        json.loads(line)
        for line in (tmp_path / "monitor.log").read_text().splitlines()
        if line.startswith("{")
    ]
    windows = [line for line in log if line.get("event") == "accuracy_window"]
    assert len(windows) == len(reports)
    assert all(len(line["versions"]) >= 1 for line in windows)
    assert windows[-1]["versions"][0]["cumulative_attributed"] == totals["challenger"]["attributed"]
    comparisons = [line for line in log if line.get("event") == "version_comparison"]
    assert comparisons and comparisons[-1]["statement"] == c["statement"]
    assert comparisons[-1]["champion_lines"] == a["attributed"]
