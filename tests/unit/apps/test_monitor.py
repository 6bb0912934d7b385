"""The monitor's pieces that need no broker: reading reports written before the live figures,
and the served model's category tops."""

from __future__ import annotations

import io
import json
from pathlib import Path

import fastavro
import numpy as np
import pytest

from worker.apps.monitor import read_category_tables, report_codec
from worker.core.accuracy import LIVE_FIELDS, VERSION_FIELDS, WindowReport
from worker.testing import tiny_catalogue
from worker.wire.codec import SINGLE_OBJECT_MARKER, ParsedSchema, load_schema

#: CRC-64-AVRO fingerprint of the AccuracyReport schema before the live figures were added
#: (the version monitors wrote until then, without a schema registry).
BEFORE_LIVE_FINGERPRINT = "bbd383ee34c3159f"


#: ... and before the per-version figures were added (the fingerprint pinned until then).
BEFORE_VERSIONS_FINGERPRINT = "e17b131c5c10ec3e"


def _before_versions_schema() -> dict:
    schema = load_schema("AccuracyReport")
    return {**schema, "fields": [f for f in schema["fields"] if f["name"] not in VERSION_FIELDS]}


def _before_live_schema() -> dict:
    schema = _before_versions_schema()
    return {**schema, "fields": [f for f in schema["fields"] if f["name"] not in LIVE_FIELDS]}


def test_report_written_before_the_live_figures_reads_with_their_defaults() -> None:
    """A report of the previous schema version (single-object encoding: named by fingerprint)
    decodes, the new fields at their defaults; a monitor resuming from it starts them at 0."""
    old = ParsedSchema.from_json(_before_live_schema())
    assert old.fingerprint.hex() == BEFORE_LIVE_FINGERPRINT
    report = WindowReport(
        0, 60_000, 10, 1_800_000, ("v1",), 4, 2, 1, 1, 0.5, 0.05, 0.5, 0.5, 2, 0.5, 0.5
    )
    record = {k: v for k, v in report.to_avro(7).items() if k not in LIVE_FIELDS + VERSION_FIELDS}
    body = io.BytesIO()
    fastavro.schemaless_writer(body, old.parsed, record)
    decoded = report_codec(None, "acc").decode(
        SINGLE_OBJECT_MARKER + old.fingerprint + body.getvalue()
    )
    assert {k: decoded[k] for k in record} == record
    assert decoded["cumulative_purchases"] == 0 and decoded["discovery_lines"] == 0
    assert decoded["event_coverage"] is None and decoded["heuristic_hit_rate_at_k"] is None


def test_report_written_before_the_version_figures_reads_with_empty_versions() -> None:
    """A report of the version before the per-version figures decodes with no versions and no
    comparison; a monitor resuming from it starts every version at 0."""
    old = ParsedSchema.from_json(_before_versions_schema())
    assert old.fingerprint.hex() == BEFORE_VERSIONS_FINGERPRINT
    report = WindowReport(
        0, 60_000, 10, 1_800_000, ("v1",), 4, 2, 1, 1, 0.5, 0.05, 0.5, 0.5, 2, 0.5, 0.5
    )
    record = {k: v for k, v in report.to_avro(7).items() if k not in VERSION_FIELDS}
    body = io.BytesIO()
    fastavro.schemaless_writer(body, old.parsed, record)
    decoded = report_codec(None, "acc").decode(
        SINGLE_OBJECT_MARKER + old.fingerprint + body.getvalue()
    )
    assert {k: decoded[k] for k in record} == record
    assert decoded["versions"] == [] and decoded["version_comparison"] is None


#: ... and before the comparison became head to head (no ``windows`` in VersionComparison).
BEFORE_WINDOWS_FINGERPRINT = "eeb28a3d6be8183d"


def test_report_written_before_the_head_to_head_comparison_reads_and_resumes() -> None:
    """A report of the version before the comparison's ``windows`` decodes with windows = 0, and
    a tracker resumed from its comparison goes on from its counts."""
    from worker.core.accuracy import (
        AccuracyTracker,
        PurchaseLine,
        ShownSuggestion,
        VersionComparison,
    )
    from worker.wire.codec import schema_history

    old = ParsedSchema.from_json(schema_history("AccuracyReport")[2])  # v3
    assert old.fingerprint.hex() == BEFORE_WINDOWS_FINGERPRINT
    tracker = AccuracyTracker(k=2, attribution_window_ms=60_000, window_ms=60_000, baseline=["a"])
    for n, (user, version) in enumerate([("u1", "v1"), ("u2", "v2"), ("u3", "v1")]):
        tracker.add_suggestion(user, ShownSuggestion(10, f"s{n}", version, ("a", "b")))
        tracker.add_purchase(PurchaseLine(user, "a" if n else "c", 20, 0))
    (report,) = tracker.flush()
    record = report.to_avro(1)
    assert record["version_comparison"] is not None
    del record["version_comparison"]["windows"]
    body = io.BytesIO()
    fastavro.schemaless_writer(body, old.parsed, record)
    decoded = report_codec(None, "acc").decode(
        SINGLE_OBJECT_MARKER + old.fingerprint + body.getvalue()
    )
    comparison = VersionComparison(**decoded["version_comparison"])
    assert comparison.windows == 0
    assert (comparison.champion_attributed, comparison.challenger_attributed) == (2, 1)
    resumed = AccuracyTracker(k=2, attribution_window_ms=60_000, window_ms=60_000, baseline=["a"])
    resumed.resume(
        closed_before_ms=60_000, attributed=3, hits=2, baseline_hits=2, comparison=comparison
    )
    resumed.add_suggestion("u4", ShownSuggestion(60_010, "s4", "v1", ("a",)))
    resumed.add_suggestion("u5", ShownSuggestion(60_010, "s5", "v2", ("a",)))
    resumed.add_purchase(PurchaseLine("u4", "a", 60_020, 0))
    resumed.add_purchase(PurchaseLine("u5", "a", 60_020, 0))
    (after,) = resumed.flush()
    c = after.version_comparison
    assert c is not None and c.windows == 1
    assert (c.champion_attributed, c.challenger_attributed) == (3, 2)


def test_report_with_versions_round_trips() -> None:
    """Per-version figures and the comparison survive the codec (names, counts, rates)."""
    from worker.core.accuracy import AccuracyTracker, PurchaseLine, ShownSuggestion

    tracker = AccuracyTracker(k=2, attribution_window_ms=60_000, window_ms=60_000, baseline=["a"])
    for n, (user, version) in enumerate([("u1", "v1"), ("u2", "v2"), ("u3", "v1")]):
        tracker.add_suggestion(user, ShownSuggestion(10, f"s{n}", version, ("a", "b")))
        tracker.add_purchase(PurchaseLine(user, "a" if n else "c", 20, 0))
    (report,) = tracker.flush()
    assert [v.model_version for v in report.versions] == ["v1", "v2"]
    assert report.version_comparison is not None
    codec = report_codec(None, "acc")
    assert codec.decode(codec.encode(report.to_avro(1))) == report.to_avro(1)


def test_every_new_report_field_has_a_default() -> None:
    """Old readers resolve new records and new readers old ones: every field added since the
    previous version has a default, and the old fields are unchanged and in their order."""
    schema = load_schema("AccuracyReport")
    added = [f for f in schema["fields"] if f["name"] in LIVE_FIELDS + VERSION_FIELDS]
    assert [f["name"] for f in added] == list(LIVE_FIELDS + VERSION_FIELDS)
    assert all("default" in f for f in added)
    report = WindowReport(0, 1, 1, 1, (), 0, 0, 0, 0, None, None, None, None, 0, None, None)
    codec = report_codec(None, "acc")
    assert codec.decode(codec.encode(report.to_avro(1))) == report.to_avro(1)


def test_category_tables_read_from_the_artifact(tmp_path: Path) -> None:
    """The per-category top lists (first K, padding dropped) and each product's category."""
    tables = tiny_catalogue(n_products=30, n_categories=3)
    tables.save(tmp_path / "tables.npz")
    tops, category_of = read_category_tables(tmp_path, 4)
    assert set(tops) == {"c0", "c1", "c2"}
    for c, name in enumerate(["c0", "c1", "c2"]):
        expected = [str(tables.product_ids[i]) for i in tables.category_top[c, :4] if i >= 0]
        assert tops[name] == expected and len(expected) == 4
    assert category_of["p004"] == str(tables.category_ids[tables.category[4]])
    assert len(category_of) == 30
    np.testing.assert_array_equal(
        tables.category, [int(category_of[p][1:]) for p in tables.product_ids]
    )
    json.dumps(tops)  # plain strings


def test_per_version_gauges_and_log_lines() -> None:
    """A report with two versions sets the model_version-labelled gauges (window and
    cumulative), the comparison gauges, and logs accuracy_window.versions and version_comparison
    (the unlabelled series stay)."""
    from types import SimpleNamespace

    from worker.apps.monitor import Monitor
    from worker.core.accuracy import AccuracyTracker, PurchaseLine, ShownSuggestion
    from worker.ops.metrics import MonitorMetrics

    tracker = AccuracyTracker(k=2, attribution_window_ms=60_000, window_ms=60_000, baseline=["a"])
    for n, (user, version) in enumerate([("u1", "v1"), ("u2", "v2"), ("u3", "v1")]):
        tracker.add_suggestion(user, ShownSuggestion(10, f"s{n}", version, ("a", "b")))
        tracker.add_purchase(PurchaseLine(user, "a" if n else "c", 20, 0))
    (report,) = tracker.flush()
    lines: list[tuple[str, dict]] = []
    log = SimpleNamespace(info=lambda event, **kw: lines.append((event, kw)))
    fake = SimpleNamespace(metrics=MonitorMetrics(), log=log)
    Monitor._log_report(fake, report)  # type: ignore[arg-type]
    value = fake.metrics.registry.get_sample_value
    assert value("monitor_version_purchase_lines", {"model_version": "v1"}) == 2
    assert value("monitor_version_hit_rate_at_k", {"model_version": "v1"}) == 0.5
    assert value("monitor_version_cumulative_hit_rate_at_k", {"model_version": "v2"}) == 1.0
    assert value("monitor_hit_rate_at_k") == pytest.approx(2 / 3)
    pair = {"champion": "v1", "challenger": "v2"}
    assert value("monitor_version_comparison_hit_rate_difference", pair) == pytest.approx(0.5)
    assert 0 < value("monitor_version_comparison_p_value", pair) <= 1
    events = dict(lines)
    assert [v["model_version"] for v in events["accuracy_window"]["versions"]] == ["v1", "v2"]
    assert events["version_comparison"]["champion_lines"] == 2
    assert (
        "challenger v2 1.000 on 1 vs champion v1 0.500 on 2"
        in events["version_comparison"]["statement"]
    )
