"""``worker models``: the registry of a models directory as a person reads it (list, show,
history) and a comparison of two versions on the same evaluation slice.

``compare`` replays a dataset's events in time order through each version's serving pipeline
(:class:`~worker.core.pipeline.Recommender`, its sessions, cold starts and trending counts, as a
worker runs it) and scores every event of the slice with a target, for both targets and their
discovery variants, beside the heuristic baselines fit on the dataset's events before the slice.
The slice starts by default after the later of the two versions' training windows, so neither
version has seen it. Both versions' hit rates are compared with a two-proportion test.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from worker.apps.train import (
    TARGETS,
    TrainSettings,
    _purchased_after,
    _read_dataset,
)
from worker.core.baselines import SessionContext, TargetMetrics, fit_baselines
from worker.core.errors import ConfigError
from worker.core.features import FEATURE_NAMES
from worker.core.pipeline import BatchEntry, Recommender
from worker.core.records import EVENT_TYPE_CODE
from worker.core.session import SESSION_GAP_MS, SessionStore
from worker.core.stats import mcnemar_p_value
from worker.model.artifact import load_artifact, read_metadata
from worker.model.registry import history, info, serving_state, versions
from worker.model.scoring import BoosterScorer

#: Events replayed before the slice so that sessions are warm when it starts.
WARM_UP_MS = 2 * SESSION_GAP_MS
BATCH = 500


def _day(ms: Any) -> str:
    if not isinstance(ms, int):
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")


def _hr(metrics: dict[str, Any], target: str) -> str:
    row = metrics.get(target, {}).get("model")
    return f"{row['hit_rate']:.3f}" if row else "-"


def format_list(models_dir: Path) -> str:
    """One line per version, newest last, with its role and its own evaluation's HR@K."""
    state = serving_state(models_dir)
    lines = [
        f"{'version':<28} {'role':<15} {'parent':<28} {'trained on (UTC)':<35} "
        f"{'HR next':>7} {'HR buy':>7}"
    ]
    for version in versions(models_dir):
        v = info(models_dir, version)
        role = v.role + (f" {state.share:.0%}" if v.role == "challenger" else "")
        window = v.training_window
        span = f"{_day(window.get('start_ms'))} .. {_day(window.get('end_ms'))}"
        lines.append(
            f"{v.version:<28} {role or '-':<15} {v.parent or '-':<28} {span:<35} "
            f"{_hr(v.metrics, 'next_item'):>7} "
            f"{_hr(v.metrics, 'purchase_within_attribution_window'):>7}"
        )
    if len(lines) == 1:
        lines.append(f"(no artifact in {models_dir})")
    return "\n".join(lines)


def format_show(models_dir: Path, version: str) -> str:
    """Everything the registry knows of one version, and the changes that named it."""
    v = info(models_dir, version)
    lines = [
        f"version        {v.version}",
        f"role           {v.role or '-'}",
        f"created        {v.created_at}",
        f"parent         {v.parent or '-'}",
        f"content sha256 {v.content_sha256}",
        f"trained on     {_day(v.training_window.get('start_ms'))} .. "
        f"{_day(v.training_window.get('end_ms'))} UTC "
        f"({v.training_window.get('events', 0):,} events)",
    ]
    for key, label in TARGETS:
        row = v.metrics.get(key, {}).get("model")
        if row:
            best = v.metrics.get("strongest_baseline", {}).get(key) or {}
            lines.append(
                f"{label}: HR@{v.metrics.get('k', 10)} {row['hit_rate']:.3f} on "
                f"{row['events']:,} events of its evaluation slice; strongest baseline "
                f"{best.get('ranker', '-')} {best.get('hit_rate', float('nan')):.3f}"
            )
    for entry in history(models_dir):
        named = {entry.get("before", {}).get(k) for k in ("champion", "challenger")} | {
            entry.get("after", {}).get(k) for k in ("champion", "challenger")
        }
        if version in named:
            lines.append(
                f"{entry['at']}  {entry['action']:<10} by {entry['by']}: {entry['why'] or '-'}"
            )
    return "\n".join(lines)


def format_history(models_dir: Path) -> str:
    lines = []
    for entry in history(models_dir):
        after = entry["after"]
        challenger = (
            f", challenger {after['challenger']} {after['share']:.0%}"
            if after.get("challenger")
            else ""
        )
        lines.append(
            f"{entry['at']}  {entry['action']:<10} champion {after['champion']}{challenger}"
            f"  by {entry['by']}: {entry['why'] or '-'}"
        )
    return "\n".join(lines) or f"(no history in {models_dir})"


@dataclass
class Comparison:
    """Per target (metadata key), per ranker: its metrics on the slice."""

    since_ms: int
    events: int
    k: int
    rankers: list[str]
    metrics: dict[str, dict[str, TargetMetrics]] = field(default_factory=dict)
    #: Per target: events hit at K by the first version only, and by the second only.
    discordant: dict[str, list[int]] = field(default_factory=dict)
    #: Versions whose training window reaches into the slice (their figures are in-sample).
    in_sample: list[str] = field(default_factory=list)


def compare(
    models_dir: Path,
    version_a: str,
    version_b: str,
    dataset_dir: Path,
    *,
    since_ms: int | None = None,
    settings: TrainSettings | None = None,
) -> Comparison:
    """Both versions of ``models_dir`` and the baselines on the dataset's events from
    ``since_ms`` (default: after both versions' training windows).

    Raises:
        RegistryError: a version is not in ``models_dir``.
        ConfigError: no event of the dataset in the slice.
    """
    for version in (version_a, version_b):
        info(models_dir, version)  # refuses an unknown version with the registry's message
    return compare_artifacts(
        models_dir / version_a,
        models_dir / version_b,
        dataset_dir,
        since_ms=since_ms,
        settings=settings,
    )


def compare_artifacts(
    dir_a: Path,
    dir_b: Path,
    dataset_dir: Path,
    *,
    since_ms: int | None = None,
    settings: TrainSettings | None = None,
) -> Comparison:
    """:func:`compare` for two artifact directories (of one registry or not); rows are named
    by the artifacts' versions."""
    settings = settings or TrainSettings()
    meta_a, meta_b = read_metadata(dir_a), read_metadata(dir_b)
    version_a, version_b = str(meta_a["version"]), str(meta_b["version"])
    if version_a == version_b:
        raise ConfigError(f"compare: both artifacts are version {version_a}")
    data = _read_dataset(dataset_dir, settings)
    h = data.history
    ends = {
        str(m["version"]): int(m.get("training_window", {}).get("end_ms", 0))
        for m in (meta_a, meta_b)
    }
    if since_ms is None:
        since_ms = max(ends.values()) + 1
    in_slice = h.times >= since_ms
    if not in_slice.any():
        raise ConfigError(
            f"{dataset_dir} has no event at or after {_day(since_ms)} UTC (after both versions' "
            "training windows): export newer traffic, or pass --since"
        )
    k, n = settings.top_k, settings.n_candidates
    _, category_index = np.unique(np.asarray(data.categories), return_inverse=True)
    before = np.flatnonzero(~in_slice)
    before = before[np.lexsort((h.times[before], h.session_codes[before]))]
    baselines = fit_baselines(
        h.items[before],
        h.types[before] == EVENT_TYPE_CODE["VIEW"],
        h.session_codes[before],
        h.times[before],
        category_index,
        covis_window=settings.covis_window,
        neighbours=n,
    )
    names = [version_a, version_b] + [b.name for b in baselines]
    result = Comparison(since_ms, int(in_slice.sum()), k, names)
    result.in_sample = [v for v, end in ends.items() if end > since_ms]
    result.metrics = {key: {name: TargetMetrics() for name in names} for key, _ in TARGETS}
    result.discordant = {key: [0, 0] for key, _ in TARGETS}
    rows = np.flatnonzero(h.times >= since_ms - WARM_UP_MS)
    index_of = {pid: i for i, pid in enumerate(data.product_ids)}
    tops = {
        version_a: _replay(dir_a, h, rows, index_of, settings),
        version_b: _replay(dir_b, h, rows, index_of, settings),
    }

    sessions: dict[str, tuple[str, int, deque[int], set[int]]] = {}
    window_ms = settings.attribution_window_ms
    for position, row in enumerate(rows.tolist()):
        event = h.events[row]
        item = int(h.items[row])
        entry = sessions.get(event.user_id)
        if (
            entry is None
            or entry[0] != event.session_id
            or event.event_time_ms - entry[1] > SESSION_GAP_MS
        ):
            entry = (event.session_id, event.event_time_ms, deque(maxlen=20), set())
        recent, seen = entry[2], entry[3]
        recent.append(item)
        seen.add(item)
        sessions[event.user_id] = (event.session_id, event.event_time_ms, recent, seen)
        if not in_slice[row]:
            continue
        target_next = int(h.next_items[row])
        bought = _purchased_after(data.purchases, event, window_ms)
        if target_next < 0 and not bought:
            continue
        context = SessionContext(list(recent), int(category_index[item]))
        lists: dict[str, tuple[list[int], set[int]]] = {}
        for v in (version_a, version_b):
            top = tops[v][position]
            lists[v] = (top, set(top))
        for ranker in baselines:
            top_n = ranker.rank(context, n)
            lists[ranker.name] = (top_n[:k], set(top_n))
        for key, targets in (
            ("next_item", {target_next} if target_next >= 0 else set()),
            ("purchase_within_attribution_window", bought),
        ):
            if not targets:
                continue
            for name, (top, pool) in lists.items():
                result.metrics[key][name].add(top, pool, targets, seen, k)
            hit_a = any(p in targets for p in lists[version_a][0])
            hit_b = any(p in targets for p in lists[version_b][0])
            if hit_a != hit_b:
                result.discordant[key][0 if hit_a else 1] += 1
    return result


def _replay(
    artifact_dir: Path,
    h: Any,
    rows: np.ndarray,
    index_of: dict[str, int],
    settings: TrainSettings,
) -> list[list[int]]:
    """Each row's top K by the version's serving pipeline, as dataset product indices (-1 for
    a product the dataset does not name)."""
    artifact = load_artifact(artifact_dir, expected_features=FEATURE_NAMES)
    recommender = Recommender(
        artifact.tables,
        BoosterScorer(artifact.booster, num_threads=settings.num_threads),
        n_candidates=settings.n_candidates,
        top_k=settings.top_k,
    )
    live = recommender.live
    store = SessionStore()
    out: list[list[int]] = []
    row_list = rows.tolist()
    for start in range(0, len(row_list), BATCH):
        entries = []
        for row in row_list[start : start + BATCH]:
            event = h.events[row]
            item = live.model.index.get(event.product_id)
            if item is None:
                item = live.add(event.product_id, event.category_id, event.price)
            entries.append(BatchEntry(event, item))
        ranked = recommender.recommend(store, entries)
        ids = live.product_ids[ranked.items].tolist()
        out.extend([index_of.get(str(pid), -1) for pid in id_row] for id_row in ids)
    return out


def format_comparison(result: Comparison) -> str:
    """The comparison table, and one significance line per target (HR@K of B against A)."""
    a, b = result.rankers[0], result.rankers[1]
    lines = [
        f"slice: {result.events:,} events from {_day(result.since_ms)} UTC; HR, MRR, NDCG at "
        f"{result.k}; dHR: HR on products not yet seen in the session"
    ]
    for version in result.in_sample:
        lines.append(
            f"warning: {version} was trained on events of this slice: its figures are in-sample"
        )
    for key, label in TARGETS:
        rows = result.metrics[key]
        events = rows[a].all.events
        lines.append(f"{label} ({events:,} events, {rows[a].discovery.events:,} discovery)")
        lines.append(f"  {'ranker':<28} {'HR':>6} {'MRR':>6} {'NDCG':>6} {'dHR':>6}")
        for name in result.rankers:
            m = rows[name]
            lines.append(
                f"  {name:<28} {m.all.hits / max(m.all.events, 1):>6.3f} "
                f"{m.all.rr_sum / max(m.all.events, 1):>6.3f} "
                f"{m.all.ndcg_sum / max(m.all.events, 1):>6.3f} "
                f"{m.discovery.hits / max(m.discovery.events, 1):>6.3f}"
            )
        only_a, only_b = result.discordant[key]
        p = mcnemar_p_value(only_a, only_b)
        verdict = (
            f"{b if only_b > only_a else a} is better (p = {p:.3f})"
            if p < 0.05
            else f"no significant difference (p = {p:.2f})"
        )
        lines.append(
            f"  same events: {only_b:,} hit by {b} only, {only_a:,} by {a} only (exact McNemar "
            f"test): {verdict}"
        )
    return "\n".join(lines)
