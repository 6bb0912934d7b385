"""The lifecycle demo's per-version rows: one per version of the monitor's report, its role from
the registry, the lines behind each hit rate, and the significance statement."""

from __future__ import annotations

from devtools.lifecycle_demo import version_rows
from worker.model.registry import ServingState


def _version(name: str, hits: int, lines: int) -> dict:
    return {
        "model_version": name,
        "cumulative_hit_rate_at_k": hits / lines,
        "cumulative_attributed": lines,
        "cumulative_heuristic_hit_rate_at_k": 0.5,
        "cumulative_discovery_hit_rate_at_k": None,
        "cumulative_events_answered": 1234,
    }


def test_rows_name_roles_lines_and_the_comparison() -> None:
    report = {
        "k": 10,
        "versions": [_version("v1", 30, 100), _version("v2", 45, 90), _version("v0", 1, 2)],
        "version_comparison": {"statement": "hit rate@10: challenger v2 ... (p = 0.03)"},
    }
    rows = dict(version_rows(report, ServingState("v1", "v2", 0.5)))
    assert rows["v1 (champion)"].startswith("hit rate@10 30.0 % on 100 lines")
    assert "recency+category 50.0 %" in rows["v1 (champion)"]
    assert (
        "discovery n/a" in rows["v1 (champion)"]
        and "1,234 events answered" in rows["v1 (champion)"]
    )
    assert rows["v2 (challenger 50%)"].startswith("hit rate@10 50.0 % on 90 lines")
    assert "v0 (retired)" in rows
    assert rows["champion vs challenger"].endswith("(p = 0.03)")


def test_no_report_no_rows() -> None:
    assert version_rows(None, ServingState("v1")) == []
    assert version_rows({"k": 10, "versions": []}, ServingState("v1")) == []
