"""The worker's and the monitor's Prometheus metrics, each in its own registry (served by
:func:`worker.ops.health.serve_http`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

LATENCY_BUCKETS_S = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
STAGE_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class WorkerMetrics:
    """The worker's metrics, in their own registry (tests may build several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, CPU, fds
        r = self.registry
        self.events_in = Counter(
            "worker_events_consumed_total", "Browsing events consumed", registry=r
        )
        self.suggestions_out = Counter(
            "worker_suggestions_produced_total",
            "Suggestions acknowledged by the broker",
            registry=r,
        )
        self.dead_letters = Counter(
            "worker_dead_letters_total",
            "Records sent to the dead-letter topic",
            ["error_class"],
            registry=r,
        )
        self.batches = Counter("worker_batches_total", "Micro-batches processed", registry=r)
        self.batch_size = Histogram(
            "worker_batch_size_events",
            "Events per micro-batch",
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
            registry=r,
        )
        self.stage_seconds = Histogram(
            "worker_stage_seconds",
            "Seconds per micro-batch and stage",
            ["stage"],
            buckets=STAGE_BUCKETS_S,
            registry=r,
        )
        self.latency = Histogram(
            "worker_event_to_suggestion_seconds",
            "Event time to suggestion acknowledged by the broker, as the worker learns it "
            "(at-least-once: when the batch is settled, before the next batch is produced)",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.gc_pause = Histogram(
            "worker_gc_pause_seconds",
            "Seconds per run of Python's cyclic garbage collector, by generation (2: a full "
            "collection; see worker.ops.heap)",
            ["generation"],
            buckets=STAGE_BUCKETS_S,
            registry=r,
        )
        self.sessions = Gauge("worker_active_sessions", "Users held in session state", registry=r)
        self.lag = Gauge(
            "worker_consumer_lag_messages",
            "Consumer lag summed over assigned partitions",
            registry=r,
        )
        self.assigned = Gauge("worker_assigned_partitions", "Partitions assigned", registry=r)
        self.restoring = Gauge(
            "worker_restoring_partitions",
            "Assigned partitions paused while their sessions are restored from the changelog",
            registry=r,
        )
        self.fetch_stalled = Gauge(
            "worker_fetch_stalled_partitions",
            "Assigned partitions the client has not fetched for FETCH_STALL_S (fails liveness)",
            registry=r,
        )
        self.outputs_stuck = Gauge(
            "worker_outputs_stuck",
            "1 while a batch's outputs stay unacknowledged though the broker answers"
            " (at-least-once; fails liveness)",
            registry=r,
        )
        self.producer_replacements = Counter(
            "worker_producer_replacements_total",
            "Output producers replaced because they were stuck or their transaction was abandoned",
            registry=r,
        )
        self.consumer_replacements = Counter(
            "worker_consumer_replacements_total",
            "Consumers replaced because they lost their partitions and never rejoined the group"
            " although the broker answered",
            registry=r,
        )
        self.model_info = Gauge(
            "worker_model_info",
            "Served model versions (value 1): role champion, or challenger for a share of users",
            ["version", "role"],
            registry=r,
        )
        self.model_reloads = Counter(
            "worker_model_reloads",
            "Changes of the models directory's serving state: swapped in between micro-batches,"
            " or rejected (unloadable, other features, failed smoke check; the old ones serve on)",
            ["outcome"],
            registry=r,
        )
        self.suggestions_by_version = Counter(
            "worker_suggestions",
            "Suggestions acknowledged by the broker, per model version that produced them",
            ["model_version"],
            registry=r,
        )
        self.events_routed = Counter(
            "worker_events_routed",
            "Events routed to a model version (champion/challenger by user), before the commit",
            ["model_version"],
            registry=r,
        )
        self.sessions_migrated = Counter(
            "worker_sessions_migrated",
            "User sessions moved from one model version's store to another's (lazily, on the"
            " user's first event after a swap or a share change)",
            registry=r,
        )
        self.cold_start_events = Counter(
            "worker_cold_start_events_total",
            "Events answered whose product the model does not know (cold starts)",
            registry=r,
        )
        self.new_products = Counter(
            "worker_new_products_total",
            "Products the model does not know added to the live catalogue (again after an"
            " eviction)",
            registry=r,
        )
        self.live_products = Gauge(
            "worker_live_catalogue_products",
            "Products the model does not know held in the live catalogue",
            registry=r,
        )
        self.trending_products = Gauge(
            "worker_trending_products",
            "Products with a live trending count of at least 0.01 (seen within about 6.6"
            " half-lives)",
            registry=r,
        )
        self.input_drift = Gauge(
            "worker_input_drift_psi",
            "Population stability index of an input quantity (event-type mix, unknown product or"
            " category share, session length, a model feature) over the last 15 minutes against"
            " the served model's training window: 0.1 moderate, 0.25 significant shift",
            ["quantity"],
            registry=r,
        )


#: The monitor's per-version gauges: (VersionReport field without ``cumulative_``, metric name
#: after ``monitor_version_`` / ``monitor_version_cumulative_``, help).
VERSION_GAUGES = (
    ("purchases", "purchase_lines", "Purchase lines of the model version"),
    ("attributed", "attributed_lines", "Purchase lines of the model version with a suggestion"),
    ("hit_rate_at_k", "hit_rate_at_k", "Hit rate@K of the model version"),
    (
        "baseline_hit_rate_at_k",
        "baseline_hit_rate_at_k",
        "Popularity baseline hit rate@K on the model version's lines",
    ),
    (
        "heuristic_hit_rate_at_k",
        "heuristic_hit_rate_at_k",
        "Hit rate@K of 'recency then category top' on the model version's lines",
    ),
    ("discovery_lines", "discovery_lines", "Discovery lines of the model version"),
    ("discovery_hit_rate_at_k", "discovery_hit_rate_at_k", "Discovery hit rate@K of the version"),
    (
        "purchase_coverage",
        "purchase_coverage",
        "Share of the model version's purchase lines with an attributable suggestion",
    ),
    ("events_answered", "events_answered", "Browsing events answered by the model version"),
)


class MonitorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, CPU, fds
        r = self.registry
        self.suggestions_in = Counter(
            "monitor_suggestions_consumed_total", "Suggestions consumed", registry=r
        )
        self.purchases_in = Counter(
            "monitor_purchases_consumed_total", "Purchase lines consumed", registry=r
        )
        self.duplicates = Counter(
            "monitor_duplicate_suggestions_total", "Suggestions seen twice", registry=r
        )
        self.dead_letters = Counter(
            "monitor_dead_letters_total", "Records dead-lettered", ["error_class"], registry=r
        )
        self.late = Counter(
            "monitor_late_purchases_total", "Purchases after their window closed", registry=r
        )
        self.reports = Counter("monitor_reports_total", "Window reports emitted", registry=r)
        self.hit_rate = Gauge(
            "monitor_hit_rate_at_k", "Hit rate@K of the last closed window", registry=r
        )
        self.baseline_hit_rate = Gauge(
            "monitor_baseline_hit_rate_at_k",
            "Popularity baseline hit rate@K of the last closed window",
            registry=r,
        )
        self.precision = Gauge(
            "monitor_precision_at_k", "Precision@K of the last closed window", registry=r
        )
        self.cumulative_hit_rate = Gauge(
            "monitor_cumulative_hit_rate_at_k", "Hit rate@K since start", registry=r
        )
        self.fetch_stalled = Gauge(
            "monitor_fetch_stalled_partitions",
            "Assigned partitions the client has not fetched for FETCH_STALL_S (fails liveness)",
            registry=r,
        )
        self.outputs_stuck = Gauge(
            "monitor_outputs_stuck",
            "1 while accuracy records stay unacknowledged though the broker answers, after one"
            " fresh producer was tried too (fails liveness)",
            registry=r,
        )
        self.producer_replacements = Counter(
            "monitor_producer_replacements_total",
            "Output producers replaced because they were stuck",
            registry=r,
        )
        self.pending = Gauge(
            "monitor_pending_purchases", "Purchases waiting for their suggestions", registry=r
        )
        self.events_in = Counter(
            "monitor_events_consumed_total", "Valid browsing events consumed", registry=r
        )
        self.invalid_events = Counter(
            "monitor_invalid_events_total",
            "Browsing events skipped as invalid (the worker dead-letters them)",
            registry=r,
        )
        self.late_events = Counter(
            "monitor_late_events_total",
            "Browsing events after their window closed (kept for sessions, not counted)",
            registry=r,
        )
        self.discovery_hit_rate = Gauge(
            "monitor_discovery_hit_rate_at_k",
            "Hit rate@K on purchases of products not viewed in the session, last closed window",
            registry=r,
        )
        self.heuristic_hit_rate = Gauge(
            "monitor_heuristic_hit_rate_at_k",
            "Hit rate@K of 'recency then category top' on the model's lines, last closed window",
            registry=r,
        )
        self.purchase_coverage = Gauge(
            "monitor_purchase_coverage",
            "Share of purchase lines with an attributable suggestion, last closed window",
            registry=r,
        )
        self.event_coverage = Gauge(
            "monitor_event_coverage",
            "Share of browsing events answered by a suggestion, last closed window",
            registry=r,
        )
        self.group_lag = Gauge(
            "monitor_worker_group_lag",
            "The workers' group lag on the events topic per partition, as the broker sees it"
            " (read_committed end offset minus committed offset), at the last probe",
            ["partition"],
            registry=r,
        )
        self.group_lag_total = Gauge(
            "monitor_worker_group_lag_total",
            "The workers' group lag summed over the events topic's partitions, at the last probe",
            registry=r,
        )
        self.group_members = Gauge(
            "monitor_worker_group_members",
            "Members of the workers' consumer group at the last probe",
            registry=r,
        )
        self.group_lag_probe_time = Gauge(
            "monitor_worker_group_lag_probe_timestamp_seconds",
            "Unix time of the last successful probe of the workers' group lag",
            registry=r,
        )
        self.group_lag_probe_failures = Counter(
            "monitor_worker_group_lag_probe_failures_total",
            "Probes of the workers' group lag the broker did not answer in time",
            registry=r,
        )
        self.cumulative_discovery_hit_rate = Gauge(
            "monitor_cumulative_discovery_hit_rate_at_k",
            "Discovery hit rate@K since start",
            registry=r,
        )
        self.cumulative_heuristic_hit_rate = Gauge(
            "monitor_cumulative_heuristic_hit_rate_at_k",
            "Heuristic hit rate@K since start",
            registry=r,
        )
        self.cumulative_purchase_coverage = Gauge(
            "monitor_cumulative_purchase_coverage", "Purchase coverage since start", registry=r
        )
        self.cumulative_event_coverage = Gauge(
            "monitor_cumulative_event_coverage", "Event coverage since start", registry=r
        )
        # Per model version (champion/challenger), on each version's purchase lines; the
        # definitions in worker.core.accuracy. A rate keeps its last value while its version
        # has no lines in a window (the version's _purchase_lines tell).
        v = ["model_version"]
        self.version_window: dict[str, Gauge] = {
            field: Gauge(
                f"monitor_version_{name}", f"{help_} of the last closed window", v, registry=r
            )
            for field, name, help_ in VERSION_GAUGES
        }
        self.version_cumulative: dict[str, Gauge] = {
            field: Gauge(
                f"monitor_version_cumulative_{name}", f"{help_} since start", v, registry=r
            )
            for field, name, help_ in VERSION_GAUGES
        }
        pair = ["champion", "challenger"]
        self.version_comparison_difference = Gauge(
            "monitor_version_comparison_hit_rate_difference",
            "Challenger's cumulative hit rate@K minus the champion's",
            pair,
            registry=r,
        )
        self.version_comparison_ci95_low = Gauge(
            "monitor_version_comparison_ci95_low",
            "Lower end of the 95 % confidence interval of that difference",
            pair,
            registry=r,
        )
        self.version_comparison_ci95_high = Gauge(
            "monitor_version_comparison_ci95_high",
            "Upper end of the 95 % confidence interval of that difference",
            pair,
            registry=r,
        )
        self.version_comparison_p_value = Gauge(
            "monitor_version_comparison_p_value",
            "Two-sided p-value of 'equal cumulative hit rates' (two-proportion z-test);"
            " below 0.05: the difference is unlikely to be noise",
            pair,
            registry=r,
        )
