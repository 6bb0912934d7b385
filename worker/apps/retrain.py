"""``worker retrain``: the scheduled retraining run, with a gate.

1. Export the last ``days`` of browsing events and purchases from the topics into a dataset
   (:mod:`worker.apps.export`, through the ``export`` callable the command line gives).
2. Train a *candidate* on it without the refit (``refit=False``): fit on the earlier 80 %, blind
   to the later 20 %, into the run's work directory (not the registry).
3. Score the champion and the candidate with :func:`worker.apps.models.compare_artifacts` on that
   later 20 %, through the serving pipeline, beside the heuristic baselines.
4. The gate: the candidate passes when its HR@K is not worse than the champion's by more than
   ``margin`` (absolute) on both targets. A registry without a champion passes by definition.
5. Passed: train again on the whole export (the refit, as ``worker train`` serves) into the
   registry, unpublished, and make it the challenger for ``share`` of the users (or the champion
   when there is none). Refused: nothing serves differently.

Every run writes a JSON report into ``<models>/reports/`` (and returns it): the window, the
export summary, both versions' figures on the slice, the decision and why.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from worker.apps.models import Comparison, compare_artifacts, format_comparison
from worker.apps.train import TARGETS, TrainSettings, train
from worker.model import registry

REPORTS_DIR = "reports"


@dataclass(frozen=True)
class RetrainSettings:
    """What a retraining run does beyond training (see the module docstring)."""

    days: float = 7.0
    margin: float = 0.01
    share: float = 0.2
    train: TrainSettings = TrainSettings()

    def __post_init__(self) -> None:
        if not self.days > 0:
            raise ValueError(f"days must be positive, not {self.days}")
        if not 0 <= self.margin < 1:
            raise ValueError(f"margin must lie in [0, 1), not {self.margin}")
        if not 0 < self.share < 1:
            raise ValueError(f"share must lie in (0, 1), not {self.share}")


def _rates(result: Comparison, version: str) -> dict[str, dict[str, float | int]]:
    out: dict[str, dict[str, float | int]] = {}
    for key, _ in TARGETS:
        m = result.metrics[key][version]
        n = m.all.events
        out[key] = {
            "events": n,
            "hit_rate": m.all.hits / n if n else 0.0,
            "discovery_hit_rate": m.discovery.hits / m.discovery.events
            if m.discovery.events
            else 0.0,
        }
    return out


def gate(
    champion: dict[str, dict[str, float | int]],
    candidate: dict[str, dict[str, float | int]],
    margin: float,
) -> tuple[bool, list[str]]:
    """Whether the candidate passes, and one reason per target."""
    passed, reasons = True, []
    for key, label in TARGETS:
        a, b = float(champion[key]["hit_rate"]), float(candidate[key]["hit_rate"])
        ok = b >= a - margin
        passed &= ok
        reasons.append(
            f"{label}: candidate {b:.3f} vs champion {a:.3f} "
            f"({'within' if ok else 'beyond'} the {margin:.3f} margin)"
        )
    return passed, reasons


def retrain(
    models_dir: Path,
    work_dir: Path,
    export: Callable[[Path], dict[str, Any]],
    settings: RetrainSettings,
    *,
    log: Any = None,
    by: str = "worker retrain",
) -> dict[str, Any]:
    """One run (module docstring); the report it also writes under ``<models>/reports/``."""
    started = time.time()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = work_dir / f"retrain-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=False)
    report: dict[str, Any] = {"started_at": datetime.now(timezone.utc).isoformat()}
    report["settings"] = {"days": settings.days, "margin": settings.margin, "share": settings.share}
    dataset = run_dir / "dataset"
    report["export"] = export(dataset)
    if log:
        log.info("retrain_exported", dataset=str(dataset))

    _, candidate_meta = train(
        dataset, run_dir / "candidate", replace(settings.train, refit=False, publish=False), log=log
    )
    candidate_dir = run_dir / "candidate" / str(candidate_meta["version"])
    report["candidate"] = {
        "version": candidate_meta["version"],
        "evaluation_window": candidate_meta["evaluation_window"],
        "own_metrics": candidate_meta["metrics"],
    }
    champion = registry.serving_state(models_dir).champion
    report["champion"] = champion
    if champion is None:
        passed, reasons = True, ["no champion yet: the first model is published as champion"]
    else:
        comparison = compare_artifacts(
            models_dir / champion,
            candidate_dir,
            dataset,
            since_ms=int(candidate_meta["evaluation_window"]["start_ms"]),
            settings=settings.train,
        )
        report["comparison"] = {
            "since_ms": comparison.since_ms,
            "in_sample": comparison.in_sample,
            "champion": _rates(comparison, champion),
            "candidate": _rates(comparison, str(candidate_meta["version"])),
            "table": format_comparison(comparison),
        }
        passed, reasons = gate(
            report["comparison"]["champion"], report["comparison"]["candidate"], settings.margin
        )
    report["passed"] = passed
    report["reasons"] = reasons
    if passed:
        _, served_meta = train(
            dataset, models_dir, replace(settings.train, refit=True, publish=False), log=log
        )
        version = str(served_meta["version"])
        why = "retrain gate passed: " + "; ".join(reasons)
        if champion is None:
            registry.publish(models_dir, version, by=by, why=why)
            report["published_as"] = "champion"
        else:
            registry.set_challenger(models_dir, version, settings.share, by=by, why=why)
            report["published_as"] = f"challenger for {settings.share:.0%} of users"
        report["published_version"] = version
    report["seconds"] = round(time.time() - started, 1)
    reports = models_dir / REPORTS_DIR
    reports.mkdir(parents=True, exist_ok=True)
    path = reports / f"retrain-{stamp}.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    report["report_path"] = str(path)
    if log:
        log.info(
            "retrain_done" if passed else "retrain_gate_refused",
            passed=passed,
            reasons=reasons,
            published=report.get("published_version"),
            report=str(path),
        )
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"candidate {report['candidate']['version']} against champion {report['champion']}"]
    if "comparison" in report:
        lines.append(report["comparison"]["table"])
    lines.append(
        ("PASSED" if report["passed"] else "REFUSED") + ": " + "; ".join(report["reasons"])
    )
    if report.get("published_version"):
        lines.append(f"published {report['published_version']} as {report['published_as']}")
    lines.append(f"report: {report['report_path']}")
    return "\n".join(lines)
