"""``worker retrain``'s gate and run, with the export replaced by a copy of a simulated history."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from worker.apps.retrain import RetrainSettings, gate, retrain
from worker.apps.train import TrainSettings
from worker.model.registry import ServingState, history, serving_state

SMALL = replace(
    TrainSettings(), num_trees=10, num_leaves=7, max_train_queries=1000, min_data_in_leaf=20
)


def _rates(next_hr: float, buy_hr: float) -> dict:
    return {
        "next_item": {"hit_rate": next_hr, "events": 100},
        "purchase_within_attribution_window": {"hit_rate": buy_hr, "events": 10},
    }


def test_gate_needs_both_targets_within_the_margin() -> None:
    assert gate(_rates(0.50, 0.70), _rates(0.495, 0.80), 0.01)[0]
    passed, reasons = gate(_rates(0.50, 0.70), _rates(0.60, 0.68), 0.01)
    assert not passed
    assert "beyond the 0.010 margin" in reasons[1] and "within" in reasons[0]


def test_settings_refuse_nonsense() -> None:
    for bad in ({"days": 0}, {"margin": 1.0}, {"share": 1.0}, {"share": 0.0}):
        with pytest.raises(ValueError):
            RetrainSettings(**bad)


def test_a_passing_run_publishes_a_challenger_and_leaves_a_report(
    tmp_path: Path, trained_models_dir: Path
) -> None:
    source = trained_models_dir.parent / "history"
    models = tmp_path / "models"
    shutil.copytree(trained_models_dir, models)
    champion = serving_state(models).champion

    def export(out: Path) -> dict:
        shutil.copytree(source, out)
        return {"kind": "test copy"}

    settings = RetrainSettings(margin=0.99, share=0.25, train=SMALL)  # a margin nothing fails
    report = retrain(models, tmp_path / "work", export, settings)
    assert report["passed"] and report["champion"] == champion
    version = report["published_version"]
    assert serving_state(models) == ServingState(champion, version, 0.25)
    assert history(models)[-1]["why"].startswith("retrain gate passed")
    comparison = report["comparison"]
    assert set(comparison) >= {"champion", "candidate", "table", "since_ms"}
    assert comparison["champion"]["next_item"]["events"] > 0
    # The champion was fit on the whole history, the slice included: the report says so.
    assert comparison["in_sample"] == [champion]
    written = json.loads(Path(report["report_path"]).read_text())
    assert written["published_version"] == version
    assert Path(report["report_path"]).parent == models / "reports"


def test_a_refused_run_changes_nothing_and_a_first_run_publishes_a_champion(
    tmp_path: Path, trained_models_dir: Path, monkeypatch
) -> None:
    source = trained_models_dir.parent / "history"

    def export(out: Path) -> dict:
        shutil.copytree(source, out)
        return {}

    models = tmp_path / "models"
    shutil.copytree(trained_models_dir, models)
    before = serving_state(models)
    import worker.apps.retrain as module

    monkeypatch.setattr(module, "gate", lambda *_: (False, ["forced refusal"]))
    report = retrain(models, tmp_path / "work", export, RetrainSettings(train=SMALL))
    assert not report["passed"] and "published_version" not in report
    assert serving_state(models) == before
    assert Path(report["report_path"]).is_file()

    monkeypatch.undo()
    empty = tmp_path / "empty"
    report = retrain(empty, tmp_path / "work2", export, RetrainSettings(train=SMALL))
    assert report["passed"] and report["published_as"] == "champion"
    assert serving_state(empty) == ServingState(report["published_version"])
