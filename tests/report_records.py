"""Accuracy report records for the tests of ``worker report``: made by the monitor's own
:class:`~worker.core.accuracy.WindowReport` (``to_avro``), so they are what the monitor writes."""

from __future__ import annotations

from worker.core.accuracy import VersionComparison, VersionReport, WindowReport

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z, a window start
MIN = 60_000


def version(
    name: str,
    attributed: int,
    hits: int,
    baseline: int,
    heuristic: int,
    discovery_lines: int = 0,
    discovery_hits: int = 0,
    purchases: int | None = None,
) -> VersionReport:
    """One version's window figures (the cumulative ones are not drawn: zeros)."""

    def rate(n: int, d: int) -> float | None:
        return n / d if d else None

    return VersionReport(
        model_version=name,
        purchases=attributed + 2 if purchases is None else purchases,
        attributed=attributed,
        hits=hits,
        hit_rate_at_k=rate(hits, attributed),
        mrr_at_k=rate(hits, 2 * attributed),
        precision_at_k=rate(hits, 10 * attributed),
        baseline_hits=baseline,
        baseline_hit_rate_at_k=rate(baseline, attributed),
        heuristic_hits=heuristic,
        heuristic_hit_rate_at_k=rate(heuristic, attributed),
        discovery_lines=discovery_lines,
        discovery_hits=discovery_hits,
        discovery_hit_rate_at_k=rate(discovery_hits, discovery_lines),
        purchase_coverage=None,
        events_answered=0,
        cumulative_purchases=0,
        cumulative_attributed=0,
        cumulative_hits=0,
        cumulative_hit_rate_at_k=None,
        cumulative_baseline_hits=0,
        cumulative_baseline_hit_rate_at_k=None,
        cumulative_heuristic_hits=0,
        cumulative_heuristic_hit_rate_at_k=None,
        cumulative_discovery_lines=0,
        cumulative_discovery_hits=0,
        cumulative_discovery_hit_rate_at_k=None,
        cumulative_purchase_coverage=None,
        cumulative_events_answered=0,
    )


def window(
    start_ms: int,
    versions: tuple[VersionReport, ...],
    *,
    k: int = 10,
    comparison: VersionComparison | None = None,
    window_ms: int = MIN,
) -> WindowReport:
    """A window whose pooled figures are the sums of its versions'."""

    def total(attr: str) -> int:
        return sum(getattr(v, attr) for v in versions)

    def rate(n: int, d: int) -> float | None:
        return n / d if d else None

    attributed, hits = total("attributed"), total("hits")
    lines, dhits = total("discovery_lines"), total("discovery_hits")
    return WindowReport(
        window_start_ms=start_ms,
        window_end_ms=start_ms + window_ms,
        k=k,
        attribution_window_ms=30 * MIN,
        model_versions=tuple(v.model_version for v in versions if v.attributed),
        purchases=total("purchases"),
        attributed=attributed,
        hits=hits,
        baseline_hits=total("baseline_hits"),
        hit_rate_at_k=rate(hits, attributed),
        precision_at_k=rate(hits, 10 * attributed),
        mrr_at_k=rate(hits, 2 * attributed),
        baseline_hit_rate_at_k=rate(total("baseline_hits"), attributed),
        cumulative_attributed=attributed,
        cumulative_hit_rate_at_k=0.5,
        cumulative_baseline_hit_rate_at_k=0.25,
        purchase_coverage=rate(attributed, total("purchases")),
        discovery_lines=lines,
        discovery_hits=dhits,
        discovery_hit_rate_at_k=rate(dhits, lines),
        heuristic_hits=total("heuristic_hits"),
        heuristic_hit_rate_at_k=rate(total("heuristic_hits"), attributed),
        versions=versions,
        version_comparison=comparison,
    )


def comparison(champion: str, challenger: str, difference: float) -> VersionComparison:
    return VersionComparison(
        champion=champion,
        challenger=challenger,
        champion_attributed=100,
        champion_hits=50,
        challenger_attributed=40,
        challenger_hits=20,
        difference=difference,
        ci95_low=difference - 0.1,
        ci95_high=difference + 0.1,
        p_value=0.5,
        significant=False,
        statement="",
    )
