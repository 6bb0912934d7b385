"""Online accuracy of suggestions against later purchases (pure; the monitor feeds it).

Definitions (also in the README, section "Accuracy metrics"). For a purchase line of product
``p`` by user ``u`` at event time ``t``:

* its **attributed suggestion** is the latest suggestion shown to ``u`` with event time in
  ``[t - W, t]`` (``W`` = attribution window); a line without one is *unattributed*;
* it is a **hit** if ``p`` is among the top ``K`` products of its attributed suggestion, and a
  **baseline hit** if ``p`` is among the ``K`` most popular products of the model's training window.

Per tumbling event-time window of purchase times:

* ``hit_rate_at_k`` = hits / attributed lines;
* ``baseline_hit_rate_at_k`` = baseline hits / attributed lines (same lines, so comparable);
* ``mrr_at_k`` = mean over attributed lines of ``1 / rank`` of ``p`` (0 if not in the top K);
* ``precision_at_k`` = mean over the distinct attributed suggestions of
  ``|top-K ∩ products of the lines attributed to it in this window| / K``.

Suggestions are deduplicated by ``suggestion_id`` (at-least-once redelivery does not count twice).
A purchase line is evaluated once the suggestions of its partition are known up to its time (the
caller's watermark), so the figures do not depend on how the two topics interleave.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ShownSuggestion:
    event_time_ms: int
    suggestion_id: str
    model_version: str
    products: tuple[str, ...]  # top-K, best first


@dataclass(frozen=True, slots=True)
class PurchaseLine:
    user_id: str
    product_id: str
    event_time_ms: int
    partition: int


@dataclass
class WindowTally:
    """Counts of one window, before it is closed into a report."""

    purchases: int = 0
    attributed: int = 0
    hits: int = 0
    baseline_hits: int = 0
    reciprocal_rank_sum: float = 0.0
    model_versions: set[str] = field(default_factory=set)
    # suggestion_id -> (top-K products, products attributed to it)
    attributed_suggestions: dict[str, tuple[tuple[str, ...], set[str]]] = field(
        default_factory=dict
    )


@dataclass(frozen=True)
class WindowReport:
    window_start_ms: int
    window_end_ms: int
    k: int
    attribution_window_ms: int
    model_versions: tuple[str, ...]
    purchases: int
    attributed: int
    hits: int
    baseline_hits: int
    hit_rate_at_k: float | None
    precision_at_k: float | None
    mrr_at_k: float | None
    baseline_hit_rate_at_k: float | None
    cumulative_attributed: int
    cumulative_hit_rate_at_k: float | None
    cumulative_baseline_hit_rate_at_k: float | None

    def to_avro(self, emitted_time_ms: int) -> dict[str, object]:
        return {
            "window_start": self.window_start_ms,
            "window_end": self.window_end_ms,
            "k": self.k,
            "attribution_window_ms": self.attribution_window_ms,
            "model_versions": list(self.model_versions),
            "purchases": self.purchases,
            "attributed": self.attributed,
            "hits": self.hits,
            "hit_rate_at_k": self.hit_rate_at_k,
            "precision_at_k": self.precision_at_k,
            "mrr_at_k": self.mrr_at_k,
            "baseline_hits": self.baseline_hits,
            "baseline_hit_rate_at_k": self.baseline_hit_rate_at_k,
            "cumulative_attributed": self.cumulative_attributed,
            "cumulative_hit_rate_at_k": self.cumulative_hit_rate_at_k,
            "cumulative_baseline_hit_rate_at_k": self.cumulative_baseline_hit_rate_at_k,
            "emitted_time": emitted_time_ms,
        }


def _ratio(num: float, den: int) -> float | None:
    return num / den if den else None


class AccuracyTracker:
    """Joins suggestions and purchases and tallies tumbling windows.

    Args:
        k: cut-off of the @K metrics (suggestions longer than K are cut).
        attribution_window_ms: ``W`` above.
        window_ms: size of the tumbling report windows (purchase event time).
        baseline: the popularity baseline's products, best first (only the first K count).
    """

    def __init__(
        self, *, k: int, attribution_window_ms: int, window_ms: int, baseline: list[str]
    ) -> None:
        if k <= 0 or attribution_window_ms < 0 or window_ms <= 0:
            raise ValueError("k and window_ms must be positive, attribution window non-negative")
        self.k = k
        self.attribution_window_ms = attribution_window_ms
        self.window_ms = window_ms
        self._baseline = set(baseline[:k])
        self._times: dict[str, list[int]] = defaultdict(list)  # user -> sorted event times
        self._shown: dict[str, list[ShownSuggestion]] = defaultdict(list)  # aligned with _times
        self._seen_ids: dict[str, set[str]] = defaultdict(set)
        self._pending: list[PurchaseLine] = []
        self._windows: dict[int, WindowTally] = {}
        self._cum_attributed = 0
        self._cum_hits = 0
        self._cum_baseline_hits = 0
        self.late_purchases = 0
        self._closed_before_ms = -(1 << 62)
        self._resumed_before_ms = -(1 << 62)
        self.replayed_purchases = 0

    # -- input ---------------------------------------------------------------------------------

    def add_suggestion(self, user_id: str, suggestion: ShownSuggestion) -> bool:
        """Remember a suggestion; False if its id was seen already (a duplicate)."""
        if suggestion.suggestion_id in self._seen_ids[user_id]:
            return False
        self._seen_ids[user_id].add(suggestion.suggestion_id)
        times = self._times[user_id]
        at = bisect.bisect_right(times, suggestion.event_time_ms)
        times.insert(at, suggestion.event_time_ms)
        cut = (
            suggestion
            if len(suggestion.products) <= self.k
            else ShownSuggestion(
                suggestion.event_time_ms,
                suggestion.suggestion_id,
                suggestion.model_version,
                suggestion.products[: self.k],
            )
        )
        self._shown[user_id].insert(at, cut)
        return True

    def add_purchase(self, line: PurchaseLine) -> bool:
        """Queue a purchase line for evaluation; False if its window was already closed."""
        if line.event_time_ms < self._resumed_before_ms:
            self.replayed_purchases += 1  # read again after a restart: reported already
            return True
        if line.event_time_ms < self._closed_before_ms:
            self.late_purchases += 1
            return False
        self._pending.append(line)
        return True

    def resume(
        self, *, closed_before_ms: int, attributed: int, hits: int, baseline_hits: int
    ) -> None:
        """Continue after a restart: windows before ``closed_before_ms`` were reported already
        (their purchases are skipped when read again) and the cumulative counts go on."""
        self._closed_before_ms = closed_before_ms
        self._resumed_before_ms = closed_before_ms
        self._cum_attributed = attributed
        self._cum_hits = hits
        self._cum_baseline_hits = baseline_hits

    @property
    def closed_before_ms(self) -> int:
        """Purchases before this time belong to windows already reported."""
        return self._closed_before_ms

    def suggestions_needed_from_ms(self) -> int:
        """Suggestions older than this can no longer be attributed to any pending or future
        purchase of an open window."""
        oldest = min(
            [p.event_time_ms for p in self._pending]
            + list(self._windows)
            + [max(self._closed_before_ms, -(1 << 61))]
        )
        return oldest - self.attribution_window_ms

    # -- progress ------------------------------------------------------------------------------

    def evaluate_ready(self, suggestion_watermark_ms: dict[int, int]) -> int:
        """Evaluate the pending lines whose partition's suggestions are known up to their time.

        Args:
            suggestion_watermark_ms: per partition, the event time up to which all suggestions
                have been added. Partitions absent are not ready.
        Returns:
            how many lines were evaluated.
        """
        still: list[PurchaseLine] = []
        done = 0
        for line in self._pending:
            mark = suggestion_watermark_ms.get(line.partition)
            if mark is not None and mark >= line.event_time_ms:
                self._evaluate(line)
                done += 1
            else:
                still.append(line)
        self._pending = still
        return done

    def close_windows(self, purchase_watermark_ms: int) -> list[WindowReport]:
        """Close, in order, the windows ending at or before the watermark with nothing pending.

        Args:
            purchase_watermark_ms: event time up to which all purchases have been added.
        """
        oldest_pending = min((p.event_time_ms for p in self._pending), default=1 << 62)
        limit = min(purchase_watermark_ms, oldest_pending)
        reports = []
        for start in sorted(self._windows):
            if start + self.window_ms > limit:
                break
            reports.append(self._close(start))
        return reports

    def flush(self) -> list[WindowReport]:
        """Evaluate everything pending and close every window (end of input)."""
        for line in self._pending:
            self._evaluate(line)
        self._pending = []
        return [self._close(start) for start in sorted(self._windows)]

    def prune(self, before_ms: int) -> None:
        """Forget suggestions older than ``before_ms - W`` (no pending or future purchase at or
        after ``before_ms`` can be attributed to them)."""
        horizon = before_ms - self.attribution_window_ms
        for user_id in list(self._times):
            times = self._times[user_id]
            cut = bisect.bisect_left(times, horizon)
            if cut == 0:
                continue
            for s in self._shown[user_id][:cut]:
                self._seen_ids[user_id].discard(s.suggestion_id)
            del times[:cut], self._shown[user_id][:cut]
            if not times:
                del self._times[user_id], self._shown[user_id], self._seen_ids[user_id]

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def users(self) -> int:
        return len(self._times)

    # -- internals -----------------------------------------------------------------------------

    def _evaluate(self, line: PurchaseLine) -> None:
        start = line.event_time_ms - line.event_time_ms % self.window_ms
        tally = self._windows.setdefault(start, WindowTally())
        tally.purchases += 1
        times = self._times.get(line.user_id)
        if not times:
            return
        latest = bisect.bisect_right(times, line.event_time_ms) - 1
        if latest < 0 or times[latest] < line.event_time_ms - self.attribution_window_ms:
            return
        shown = self._shown[line.user_id][latest]
        tally.attributed += 1
        tally.model_versions.add(shown.model_version)
        if line.product_id in shown.products:
            tally.hits += 1
            tally.reciprocal_rank_sum += 1.0 / (shown.products.index(line.product_id) + 1)
        if line.product_id in self._baseline:
            tally.baseline_hits += 1
        entry = tally.attributed_suggestions.setdefault(
            shown.suggestion_id, (shown.products, set())
        )
        entry[1].add(line.product_id)

    def _close(self, start: int) -> WindowReport:
        tally = self._windows.pop(start)
        self._closed_before_ms = max(self._closed_before_ms, start + self.window_ms)
        self._cum_attributed += tally.attributed
        self._cum_hits += tally.hits
        self._cum_baseline_hits += tally.baseline_hits
        precision_sum = sum(
            len(set(top) & bought) / self.k for top, bought in tally.attributed_suggestions.values()
        )
        return WindowReport(
            window_start_ms=start,
            window_end_ms=start + self.window_ms,
            k=self.k,
            attribution_window_ms=self.attribution_window_ms,
            model_versions=tuple(sorted(tally.model_versions)),
            purchases=tally.purchases,
            attributed=tally.attributed,
            hits=tally.hits,
            baseline_hits=tally.baseline_hits,
            hit_rate_at_k=_ratio(tally.hits, tally.attributed),
            precision_at_k=_ratio(precision_sum, len(tally.attributed_suggestions)),
            mrr_at_k=_ratio(tally.reciprocal_rank_sum, tally.attributed),
            baseline_hit_rate_at_k=_ratio(tally.baseline_hits, tally.attributed),
            cumulative_attributed=self._cum_attributed,
            cumulative_hit_rate_at_k=_ratio(self._cum_hits, self._cum_attributed),
            cumulative_baseline_hit_rate_at_k=_ratio(self._cum_baseline_hits, self._cum_attributed),
        )
