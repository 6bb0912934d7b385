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

Live figures on the same attributed lines. The **session before** a suggestion ``s`` (time ``ts``,
session id ``σ``) is the user's browsing events with session id ``σ`` and event time in
``[ts - L, ts]`` (``L`` = session lookback; the event that caused ``s`` included):

* a **discovery line** is an attributed line whose product is not among the products of the
  session before its attributed suggestion; a **discovery hit** is a discovery line that is a
  hit. ``discovery_hit_rate_at_k`` = discovery hits / discovery lines;
* the **heuristic** "recency then category top" ranks, at the attributed suggestion: the session
  before it's distinct products, most recent first; then the most viewed products (of the
  model's training window) of the category of its most recent event; then the ``K`` most
  popular products; its first ``K``. A **heuristic hit** is an attributed line whose product is
  in that list; ``heuristic_hit_rate_at_k`` = heuristic hits / attributed lines (the model's
  denominator);
* ``purchase_coverage`` = attributed lines / purchase lines;
* ``event_coverage`` = events answered / events, where events are the distinct ``event_id`` of
  the browsing events read with event time in the window and an event is *answered* when a
  suggestion with its ``event_id`` was read before the window closed (a suggestion carries its
  event's time, so both fall in the same window).

Per model version (champion/challenger: every suggestion carries its ``model_version``):

* a purchase line's **version** is its attributed suggestion's ``model_version``; a line without
  an attributed suggestion takes the version of the user's latest suggestion with event time in
  ``[t - W - L, t]`` (a user stays on one version, so the version that served the user); a line
  with neither is *unversioned* and counts in the pooled figures only. So the per-version
  purchase lines sum to the pooled purchase lines minus the unversioned ones, and the
  per-version attributed lines, hits, baseline, heuristic and discovery counts sum to the pooled
  ones exactly;
* every figure above is computed per version on that version's lines: hit rate, MRR, precision
  (over that version's attributed suggestions), the popularity and heuristic baselines on the
  same lines, discovery lines and hits, and ``purchase_coverage`` = the version's attributed
  lines / the version's lines;
* ``events_answered`` per version: the window's events answered by a suggestion of that version
  (an event answered by two versions, a redelivery across a model swap, counts for both; the
  per-version event denominator is unknown, since an unanswered event has no version);
* the cumulative per-version counts go on across windows (and restarts);
* a :class:`VersionComparison` compares two versions' hit rates with a two-proportion test
  (:func:`worker.core.stats.compare_proportions`) **head to head**: over the windows in which
  both served suggestions, never over a period one served alone (a champion's weeks alone saw
  other traffic than the days it shared with a challenger). The pair is the champion and the
  challenger when the caller names them, else the two versions that served in a window when
  there were exactly two (the champion the one with more attributed lines); a new pair (a
  promotion, a new challenger) starts from zero, and the counts go on across restarts.

Suggestions are deduplicated by ``suggestion_id`` (at-least-once redelivery does not count twice).
A purchase line is evaluated once the suggestions and events of its partition are known up to its
time (the caller's watermark), so the figures do not depend on how the topics interleave.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from worker.core.stats import compare_proportions

NEVER_MS = -(1 << 62)


@dataclass(frozen=True, slots=True)
class ShownSuggestion:
    event_time_ms: int
    suggestion_id: str
    model_version: str
    products: tuple[str, ...]  # top-K, best first
    session_id: str = ""  # session of the event that caused it
    event_id: str = ""  # the event that caused it


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """A browsing event as the monitor keeps it (its category: the model's for a product the
    model knows, else the event's own ``category_id``)."""

    event_time_ms: int
    event_id: str
    product_id: str
    category_id: str | None
    session_id: str


@dataclass(frozen=True, slots=True)
class PurchaseLine:
    user_id: str
    product_id: str
    event_time_ms: int
    partition: int


@dataclass
class VersionCounts:
    """One model version's counts, of a window or cumulative."""

    purchases: int = 0
    attributed: int = 0
    hits: int = 0
    baseline_hits: int = 0
    heuristic_hits: int = 0
    discovery_lines: int = 0
    discovery_hits: int = 0
    events_answered: int = 0
    reciprocal_rank_sum: float = 0.0  # windows only

    def add(self, other: VersionCounts) -> None:
        self.purchases += other.purchases
        self.attributed += other.attributed
        self.hits += other.hits
        self.baseline_hits += other.baseline_hits
        self.heuristic_hits += other.heuristic_hits
        self.discovery_lines += other.discovery_lines
        self.discovery_hits += other.discovery_hits
        self.events_answered += other.events_answered


@dataclass(frozen=True)
class VersionReport:
    """One model version's figures in a window report (the Avro ``VersionAccuracy`` record);
    the definitions are the pooled ones restricted to the version's lines (module docstring)."""

    model_version: str
    purchases: int
    attributed: int
    hits: int
    hit_rate_at_k: float | None
    mrr_at_k: float | None
    precision_at_k: float | None
    baseline_hits: int
    baseline_hit_rate_at_k: float | None
    heuristic_hits: int
    heuristic_hit_rate_at_k: float | None
    discovery_lines: int
    discovery_hits: int
    discovery_hit_rate_at_k: float | None
    purchase_coverage: float | None
    events_answered: int
    cumulative_purchases: int
    cumulative_attributed: int
    cumulative_hits: int
    cumulative_hit_rate_at_k: float | None
    cumulative_baseline_hits: int
    cumulative_baseline_hit_rate_at_k: float | None
    cumulative_heuristic_hits: int
    cumulative_heuristic_hit_rate_at_k: float | None
    cumulative_discovery_lines: int
    cumulative_discovery_hits: int
    cumulative_discovery_hit_rate_at_k: float | None
    cumulative_purchase_coverage: float | None
    cumulative_events_answered: int

    def to_avro(self) -> dict[str, object]:
        return asdict(self)

    def cumulative_counts(self) -> VersionCounts:
        """The cumulative counts (what a restarted monitor resumes from)."""
        return VersionCounts(
            purchases=self.cumulative_purchases,
            attributed=self.cumulative_attributed,
            hits=self.cumulative_hits,
            baseline_hits=self.cumulative_baseline_hits,
            heuristic_hits=self.cumulative_heuristic_hits,
            discovery_lines=self.cumulative_discovery_lines,
            discovery_hits=self.cumulative_discovery_hits,
            events_answered=self.cumulative_events_answered,
        )


@dataclass(frozen=True)
class VersionComparison:
    """The challenger's hit rate against the champion's over the windows in which both served
    (two-proportion z-test over their attributed lines there;
    :func:`worker.core.stats.compare_proportions`)."""

    champion: str
    challenger: str
    champion_attributed: int
    champion_hits: int
    challenger_attributed: int
    challenger_hits: int
    difference: float  # challenger's rate minus the champion's
    ci95_low: float
    ci95_high: float
    p_value: float
    significant: bool
    statement: str
    windows: int = 0  # report windows counted: those in which both versions served

    def to_avro(self) -> dict[str, object]:
        return asdict(self)


def compare_versions(
    counts: Mapping[str, tuple[int, int]],
    champion: str | None = None,
    challenger: str | None = None,
    windows: int = 0,
) -> VersionComparison | None:
    """Compare two versions' hit rates from their ``(attributed lines, hits)``, or None when
    there is no pair.

    The pair: ``champion`` and ``challenger`` when both are given and both have attributed lines;
    otherwise the two versions with attributed lines when there are exactly two, the champion
    being ``champion`` if it is one of them, else the one with more attributed lines (ties: the
    first in sort order). ``windows``: how many report windows the counts cover (reported).
    """
    with_lines = {name: c for name, c in counts.items() if c[0] > 0}
    if champion in with_lines and challenger in with_lines and champion != challenger:
        a, b = champion, challenger
    elif len(with_lines) == 2:
        a, b = sorted(with_lines)
        if champion == b or (champion != a and with_lines[b][0] > with_lines[a][0]):
            a, b = b, a
    else:
        return None
    (a_lines, a_hits), (b_lines, b_hits) = with_lines[a], with_lines[b]
    result = compare_proportions(a_hits, a_lines, b_hits, b_lines)
    plural = "s" if windows != 1 else ""
    return VersionComparison(
        champion=a,
        challenger=b,
        champion_attributed=a_lines,
        champion_hits=a_hits,
        challenger_attributed=b_lines,
        challenger_hits=b_hits,
        difference=result.difference,
        ci95_low=result.ci95_low,
        ci95_high=result.ci95_high,
        p_value=result.p_value,
        significant=result.significant,
        statement=f"hit rate@K over {windows} window{plural} both served: "
        + result.statement(f"champion {a}", f"challenger {b}"),
        windows=windows,
    )


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
    discovery_lines: int = 0
    discovery_hits: int = 0
    heuristic_hits: int = 0
    event_ids: set[str] = field(default_factory=set)  # distinct events read in the window
    versions: dict[str, VersionCounts] = field(default_factory=dict)
    suggestion_versions: dict[str, str] = field(default_factory=dict)  # attributed suggestions

    def version(self, name: str) -> VersionCounts:
        counts = self.versions.get(name)
        if counts is None:
            counts = self.versions[name] = VersionCounts()
        return counts


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
    purchase_coverage: float | None = None
    discovery_lines: int = 0
    discovery_hits: int = 0
    discovery_hit_rate_at_k: float | None = None
    heuristic_hits: int = 0
    heuristic_hit_rate_at_k: float | None = None
    events: int = 0
    events_answered: int = 0
    event_coverage: float | None = None
    cumulative_purchases: int = 0
    cumulative_purchase_coverage: float | None = None
    cumulative_discovery_lines: int = 0
    cumulative_discovery_hits: int = 0
    cumulative_discovery_hit_rate_at_k: float | None = None
    cumulative_heuristic_hits: int = 0
    cumulative_heuristic_hit_rate_at_k: float | None = None
    cumulative_events: int = 0
    cumulative_events_answered: int = 0
    cumulative_event_coverage: float | None = None
    versions: tuple[VersionReport, ...] = ()
    version_comparison: VersionComparison | None = None

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
            **{name: getattr(self, name) for name in LIVE_FIELDS},
            "versions": [v.to_avro() for v in self.versions],
            "version_comparison": (
                self.version_comparison.to_avro() if self.version_comparison is not None else None
            ),
        }


#: The report's fields added with the live discovery, heuristic and coverage figures (in the Avro
#: record with defaults, so older readers and older records stay compatible).
LIVE_FIELDS = (
    "purchase_coverage",
    "discovery_lines",
    "discovery_hits",
    "discovery_hit_rate_at_k",
    "heuristic_hits",
    "heuristic_hit_rate_at_k",
    "events",
    "events_answered",
    "event_coverage",
    "cumulative_purchases",
    "cumulative_purchase_coverage",
    "cumulative_discovery_lines",
    "cumulative_discovery_hits",
    "cumulative_discovery_hit_rate_at_k",
    "cumulative_heuristic_hits",
    "cumulative_heuristic_hit_rate_at_k",
    "cumulative_events",
    "cumulative_events_answered",
    "cumulative_event_coverage",
)

#: The report's fields added with the per-model-version figures (with defaults too).
VERSION_FIELDS = ("versions", "version_comparison")


@dataclass
class Cumulative:
    """Counts over every window closed so far (restored from the last report on a restart)."""

    purchases: int = 0
    attributed: int = 0
    hits: int = 0
    baseline_hits: int = 0
    discovery_lines: int = 0
    discovery_hits: int = 0
    heuristic_hits: int = 0
    events: int = 0
    events_answered: int = 0
    versions: dict[str, VersionCounts] = field(default_factory=dict)
    #: The compared pair (sorted names), each one's ``[attributed, hits]`` over the windows in
    #: which both served, and how many windows that was (module docstring).
    pair: tuple[str, str] | None = None
    pair_counts: dict[str, list[int]] = field(default_factory=dict)
    pair_windows: int = 0


def heuristic_top(
    session: Sequence[SessionEvent],
    category_top: Mapping[str, Sequence[str]],
    popular: Sequence[str],
    k: int,
) -> list[str]:
    """ "Recency then category top": the session's distinct products, most recent first
    (``session`` is most recent first), then the most viewed products of the most recent
    event's category, then ``popular``; the first ``k``."""
    out: list[str] = []
    seen: set[str] = set()
    last_category = session[0].category_id if session else None
    tops = category_top.get(last_category, ()) if last_category is not None else ()
    for products in ((e.product_id for e in session), tops, popular):
        for product in products:
            if len(out) >= k:
                return out
            if product not in seen:
                seen.add(product)
                out.append(product)
    return out


def _ratio(num: float, den: int) -> float | None:
    return num / den if den else None


class AccuracyTracker:
    """Joins suggestions, browsing events and purchases and tallies tumbling windows.

    Args:
        k: cut-off of the @K metrics (suggestions longer than K are cut).
        attribution_window_ms: ``W`` above.
        window_ms: size of the tumbling report windows (purchase and browsing event time).
        baseline: the popularity baseline's products, best first (only the first K count); also
            the heuristic's last resort.
        category_top: per category id, its most viewed products, best first (the heuristic's
            second source; empty: recency then popularity).
        session_lookback_ms: ``L`` above: how far back from a suggestion its session's events
            are looked at (bounds the events kept per user).
    """

    def __init__(
        self,
        *,
        k: int,
        attribution_window_ms: int,
        window_ms: int,
        baseline: list[str],
        category_top: Mapping[str, Sequence[str]] | None = None,
        session_lookback_ms: int = 3_600_000,
    ) -> None:
        if k <= 0 or attribution_window_ms < 0 or window_ms <= 0 or session_lookback_ms < 0:
            raise ValueError(
                "k and window_ms must be positive, attribution window and lookback non-negative"
            )
        self.k = k
        self.attribution_window_ms = attribution_window_ms
        self.window_ms = window_ms
        self.session_lookback_ms = session_lookback_ms
        self._popular = list(baseline[:k])
        self._baseline = set(self._popular)
        self._category_top = {c: list(top[:k]) for c, top in (category_top or {}).items()}
        self._times: dict[str, list[int]] = defaultdict(list)  # user -> sorted event times
        self._shown: dict[str, list[ShownSuggestion]] = defaultdict(list)  # aligned with _times
        self._seen_ids: dict[str, set[str]] = defaultdict(set)
        self._event_times: dict[str, list[int]] = defaultdict(list)  # user -> sorted times
        self._events: dict[str, list[SessionEvent]] = defaultdict(list)  # aligned
        # window -> answered event id -> versions of the suggestions that answered it
        self._answered: dict[int, dict[str, set[str]]] = defaultdict(dict)
        # user -> sorted suggestion times and their versions (the version of a line without an
        # attributed suggestion; kept W + L back)
        self._version_times: dict[str, list[int]] = defaultdict(list)
        self._version_names: dict[str, list[str]] = defaultdict(list)
        #: Champion and challenger to compare, when the caller knows them (else: the two
        #: versions with lines, the champion the one with more).
        self.champion: str | None = None
        self.challenger: str | None = None
        self._pending: list[PurchaseLine] = []
        self._windows: dict[int, WindowTally] = {}
        self._cum = Cumulative()
        self.late_purchases = 0
        self.late_events = 0
        self._closed_before_ms = NEVER_MS
        self._resumed_before_ms = NEVER_MS
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
                suggestion.session_id,
                suggestion.event_id,
            )
        )
        self._shown[user_id].insert(at, cut)
        version_times = self._version_times[user_id]
        at = bisect.bisect_right(version_times, suggestion.event_time_ms)
        version_times.insert(at, suggestion.event_time_ms)
        self._version_names[user_id].insert(at, suggestion.model_version)
        if suggestion.event_id and suggestion.event_time_ms >= self._closed_before_ms:
            answered = self._answered[self._window_of(suggestion.event_time_ms)]
            answered.setdefault(suggestion.event_id, set()).add(suggestion.model_version)
        return True

    def add_event(self, user_id: str, event: SessionEvent) -> bool:
        """Remember a browsing event (for the sessions) and count it in its window; False if
        its window was already closed (kept for the sessions, not counted)."""
        times = self._event_times[user_id]
        at = bisect.bisect_right(times, event.event_time_ms)
        times.insert(at, event.event_time_ms)
        self._events[user_id].insert(at, event)
        if event.event_time_ms < self._resumed_before_ms:
            return True  # read again after a restart: reported already
        if event.event_time_ms < self._closed_before_ms:
            self.late_events += 1
            return False
        start = self._window_of(event.event_time_ms)
        self._windows.setdefault(start, WindowTally()).event_ids.add(event.event_id)
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
        self,
        *,
        closed_before_ms: int,
        attributed: int,
        hits: int,
        baseline_hits: int,
        purchases: int = 0,
        discovery_lines: int = 0,
        discovery_hits: int = 0,
        heuristic_hits: int = 0,
        events: int = 0,
        events_answered: int = 0,
        versions: Mapping[str, VersionCounts] | None = None,
        comparison: VersionComparison | None = None,
    ) -> None:
        """Continue after a restart: windows before ``closed_before_ms`` were reported already
        (their purchases and events are skipped when read again) and the cumulative counts, per
        version too, go on, as do the head-to-head counts of the last ``comparison``."""
        self._closed_before_ms = closed_before_ms
        self._resumed_before_ms = closed_before_ms
        self._cum = Cumulative(
            purchases=purchases,
            attributed=attributed,
            hits=hits,
            baseline_hits=baseline_hits,
            discovery_lines=discovery_lines,
            discovery_hits=discovery_hits,
            heuristic_hits=heuristic_hits,
            events=events,
            events_answered=events_answered,
            versions={name: VersionCounts(**asdict(c)) for name, c in (versions or {}).items()},
        )
        if comparison is not None:
            c = self._cum
            c.pair = (
                min(comparison.champion, comparison.challenger),
                max(comparison.champion, comparison.challenger),
            )
            c.pair_counts = {
                comparison.champion: [comparison.champion_attributed, comparison.champion_hits],
                comparison.challenger: [
                    comparison.challenger_attributed,
                    comparison.challenger_hits,
                ],
            }
            c.pair_windows = comparison.windows

    @property
    def closed_before_ms(self) -> int:
        """Purchases and events before this time belong to windows already reported."""
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

    def suggestion_versions_needed_from_ms(self) -> int:
        """Suggestions older than this can no longer give a version to any pending or future
        purchase line of an open window (``W + L`` back)."""
        return self.suggestions_needed_from_ms() - self.session_lookback_ms

    def events_needed_from_ms(self) -> int:
        """Events older than this are in no session any pending or future purchase of an open
        window can look at, nor in an open window."""
        return self.suggestions_needed_from_ms() - self.session_lookback_ms

    # -- progress ------------------------------------------------------------------------------

    def evaluate_ready(self, suggestion_watermark_ms: dict[int, int]) -> int:
        """Evaluate the pending lines whose partition's suggestions and events are known up to
        their time.

        Args:
            suggestion_watermark_ms: per partition, the event time up to which all suggestions
                and browsing events have been added. Partitions absent are not ready.
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
            purchase_watermark_ms: event time up to which all purchases, browsing events and
                suggestions have been added.
        """
        oldest_pending = min((p.event_time_ms for p in self._pending), default=1 << 62)
        limit = min(purchase_watermark_ms, oldest_pending)
        reports = []
        for start in sorted(self._windows):
            if start + self.window_ms > limit:
                break
            reports.append(self._close(start))
        # Every window ending by the limit is closed now: drop the answers of those without
        # events (bounded even when no event is read).
        for start in [s for s in self._answered if s + self.window_ms <= limit]:
            del self._answered[start]
        return reports

    def flush(self) -> list[WindowReport]:
        """Evaluate everything pending and close every window (end of input)."""
        for line in self._pending:
            self._evaluate(line)
        self._pending = []
        reports = [self._close(start) for start in sorted(self._windows)]
        self._answered.clear()
        return reports

    def prune(self, before_ms: int) -> None:
        """Forget suggestions older than ``before_ms - W``, their versions and events older than
        ``before_ms - W - L`` (no future purchase at or after ``before_ms`` can be attributed to
        them, nor look at them); ``before_ms`` is lowered to the oldest pending purchase, whose
        suggestions and session are kept."""
        before_ms = min([before_ms] + [p.event_time_ms for p in self._pending])
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
        horizon -= self.session_lookback_ms
        for user_id in list(self._version_times):
            times = self._version_times[user_id]
            cut = bisect.bisect_left(times, horizon)
            if cut == 0:
                continue
            del times[:cut], self._version_names[user_id][:cut]
            if not times:
                del self._version_times[user_id], self._version_names[user_id]
        for user_id in list(self._event_times):
            times = self._event_times[user_id]
            cut = bisect.bisect_left(times, horizon)
            if cut == 0:
                continue
            del times[:cut], self._events[user_id][:cut]
            if not times:
                del self._event_times[user_id], self._events[user_id]

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def users(self) -> int:
        return len(self._times)

    @property
    def event_users(self) -> int:
        """Users with browsing events held."""
        return len(self._event_times)

    # -- internals -----------------------------------------------------------------------------

    def _window_of(self, time_ms: int) -> int:
        return time_ms - time_ms % self.window_ms

    def session_before(self, user_id: str, shown: ShownSuggestion) -> list[SessionEvent]:
        """The events of the session before ``shown``, most recent first (of equal times, the
        one read last first)."""
        times = self._event_times.get(user_id)
        if not times:
            return []
        t = shown.event_time_ms
        lo = bisect.bisect_left(times, t - self.session_lookback_ms)
        hi = bisect.bisect_right(times, t)
        events = self._events[user_id]
        return [e for e in reversed(events[lo:hi]) if e.session_id == shown.session_id]

    def _evaluate(self, line: PurchaseLine) -> None:
        start = self._window_of(line.event_time_ms)
        tally = self._windows.setdefault(start, WindowTally())
        tally.purchases += 1
        shown = self._attributed(line)
        if shown is None:
            version = self._version_of(line)
            if version is not None:
                tally.version(version).purchases += 1
            return
        v = tally.version(shown.model_version)
        v.purchases += 1
        tally.attributed += 1
        v.attributed += 1
        tally.model_versions.add(shown.model_version)
        hit = line.product_id in shown.products
        if hit:
            rr = 1.0 / (shown.products.index(line.product_id) + 1)
            tally.hits += 1
            tally.reciprocal_rank_sum += rr
            v.hits += 1
            v.reciprocal_rank_sum += rr
        if line.product_id in self._baseline:
            tally.baseline_hits += 1
            v.baseline_hits += 1
        session = self.session_before(line.user_id, shown)
        if all(e.product_id != line.product_id for e in session):
            tally.discovery_lines += 1
            tally.discovery_hits += hit
            v.discovery_lines += 1
            v.discovery_hits += hit
        if line.product_id in heuristic_top(session, self._category_top, self._popular, self.k):
            tally.heuristic_hits += 1
            v.heuristic_hits += 1
        entry = tally.attributed_suggestions.setdefault(
            shown.suggestion_id, (shown.products, set())
        )
        entry[1].add(line.product_id)
        tally.suggestion_versions[shown.suggestion_id] = shown.model_version

    def _attributed(self, line: PurchaseLine) -> ShownSuggestion | None:
        """The line's attributed suggestion: the user's latest within ``[t - W, t]``."""
        times = self._times.get(line.user_id)
        if not times:
            return None
        latest = bisect.bisect_right(times, line.event_time_ms) - 1
        if latest < 0 or times[latest] < line.event_time_ms - self.attribution_window_ms:
            return None
        return self._shown[line.user_id][latest]

    def _version_of(self, line: PurchaseLine) -> str | None:
        """The version of the user's latest suggestion within ``[t - W - L, t]`` (a line
        without an attributed suggestion), or None."""
        times = self._version_times.get(line.user_id)
        if not times:
            return None
        latest = bisect.bisect_right(times, line.event_time_ms) - 1
        horizon = line.event_time_ms - self.attribution_window_ms - self.session_lookback_ms
        if latest < 0 or times[latest] < horizon:
            return None
        return self._version_names[line.user_id][latest]

    def _close(self, start: int) -> WindowReport:
        tally = self._windows.pop(start)
        answered_by = self._answered.pop(start, {})
        self._closed_before_ms = max(self._closed_before_ms, start + self.window_ms)
        events = len(tally.event_ids)
        answered = len(tally.event_ids & answered_by.keys())
        for event_id in tally.event_ids:
            for name in answered_by.get(event_id, ()):
                tally.version(name).events_answered += 1
        c = self._cum
        c.purchases += tally.purchases
        c.attributed += tally.attributed
        c.hits += tally.hits
        c.baseline_hits += tally.baseline_hits
        c.discovery_lines += tally.discovery_lines
        c.discovery_hits += tally.discovery_hits
        c.heuristic_hits += tally.heuristic_hits
        c.events += events
        c.events_answered += answered
        precision_sum = sum(
            len(set(top) & bought) / self.k for top, bought in tally.attributed_suggestions.values()
        )
        versions = self._version_reports(tally)
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
            cumulative_attributed=c.attributed,
            cumulative_hit_rate_at_k=_ratio(c.hits, c.attributed),
            cumulative_baseline_hit_rate_at_k=_ratio(c.baseline_hits, c.attributed),
            purchase_coverage=_ratio(tally.attributed, tally.purchases),
            discovery_lines=tally.discovery_lines,
            discovery_hits=tally.discovery_hits,
            discovery_hit_rate_at_k=_ratio(tally.discovery_hits, tally.discovery_lines),
            heuristic_hits=tally.heuristic_hits,
            heuristic_hit_rate_at_k=_ratio(tally.heuristic_hits, tally.attributed),
            events=events,
            events_answered=answered,
            event_coverage=_ratio(answered, events),
            cumulative_purchases=c.purchases,
            cumulative_purchase_coverage=_ratio(c.attributed, c.purchases),
            cumulative_discovery_lines=c.discovery_lines,
            cumulative_discovery_hits=c.discovery_hits,
            cumulative_discovery_hit_rate_at_k=_ratio(c.discovery_hits, c.discovery_lines),
            cumulative_heuristic_hits=c.heuristic_hits,
            cumulative_heuristic_hit_rate_at_k=_ratio(c.heuristic_hits, c.attributed),
            cumulative_events=c.events,
            cumulative_events_answered=c.events_answered,
            cumulative_event_coverage=_ratio(c.events_answered, c.events),
            versions=versions,
            version_comparison=self._compare_head_to_head(tally),
        )

    def _compare_head_to_head(self, tally: WindowTally) -> VersionComparison | None:
        """Add the window to the compared pair's counts if both served in it, and compare."""
        c = self._cum
        # Served in the window: answered one of its events or has one of its purchase lines.
        served = set(tally.versions)
        if self.champion and self.challenger and self.champion != self.challenger:
            pair: tuple[str, str] | None = (
                min(self.champion, self.challenger),
                max(self.champion, self.challenger),
            )
        elif len(served) == 2:
            low, high = sorted(served)
            pair = (low, high)
        else:
            pair = None  # this window names no pair: the last one goes on
        if pair is not None and pair != c.pair:
            c.pair, c.pair_counts, c.pair_windows = pair, {n: [0, 0] for n in pair}, 0
        if c.pair is None:
            return None
        if all(name in served for name in c.pair):
            for name in c.pair:
                counts = tally.versions.get(name, VersionCounts())
                c.pair_counts[name][0] += counts.attributed
                c.pair_counts[name][1] += counts.hits
            c.pair_windows += 1
        return compare_versions(
            {name: (lines, hits) for name, (lines, hits) in c.pair_counts.items()},
            self.champion,
            self.challenger,
            c.pair_windows,
        )

    def _version_reports(self, tally: WindowTally) -> tuple[VersionReport, ...]:
        """Adds the window's per-version counts to the cumulative ones and reports every
        version seen so far (the window's figures of a version without lines there are 0 or
        None; its cumulative figures are carried, so a restarted monitor resumes them)."""
        precision_sums: dict[str, float] = defaultdict(float)
        suggestions: dict[str, int] = defaultdict(int)
        for sid, (top, bought) in tally.attributed_suggestions.items():
            name = tally.suggestion_versions[sid]
            precision_sums[name] += len(set(top) & bought) / self.k
            suggestions[name] += 1
        cum_versions = self._cum.versions
        for name, counts in tally.versions.items():
            cum_versions.setdefault(name, VersionCounts()).add(counts)
        out = []
        for name in sorted(cum_versions):
            w = tally.versions.get(name, VersionCounts())
            c = cum_versions[name]
            out.append(
                VersionReport(
                    model_version=name,
                    purchases=w.purchases,
                    attributed=w.attributed,
                    hits=w.hits,
                    hit_rate_at_k=_ratio(w.hits, w.attributed),
                    mrr_at_k=_ratio(w.reciprocal_rank_sum, w.attributed),
                    precision_at_k=_ratio(precision_sums[name], suggestions[name]),
                    baseline_hits=w.baseline_hits,
                    baseline_hit_rate_at_k=_ratio(w.baseline_hits, w.attributed),
                    heuristic_hits=w.heuristic_hits,
                    heuristic_hit_rate_at_k=_ratio(w.heuristic_hits, w.attributed),
                    discovery_lines=w.discovery_lines,
                    discovery_hits=w.discovery_hits,
                    discovery_hit_rate_at_k=_ratio(w.discovery_hits, w.discovery_lines),
                    purchase_coverage=_ratio(w.attributed, w.purchases),
                    events_answered=w.events_answered,
                    cumulative_purchases=c.purchases,
                    cumulative_attributed=c.attributed,
                    cumulative_hits=c.hits,
                    cumulative_hit_rate_at_k=_ratio(c.hits, c.attributed),
                    cumulative_baseline_hits=c.baseline_hits,
                    cumulative_baseline_hit_rate_at_k=_ratio(c.baseline_hits, c.attributed),
                    cumulative_heuristic_hits=c.heuristic_hits,
                    cumulative_heuristic_hit_rate_at_k=_ratio(c.heuristic_hits, c.attributed),
                    cumulative_discovery_lines=c.discovery_lines,
                    cumulative_discovery_hits=c.discovery_hits,
                    cumulative_discovery_hit_rate_at_k=_ratio(c.discovery_hits, c.discovery_lines),
                    cumulative_purchase_coverage=_ratio(c.attributed, c.purchases),
                    cumulative_events_answered=c.events_answered,
                )
            )
        return tuple(out)
