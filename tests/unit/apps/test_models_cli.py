"""``worker models`` end to end on two small trained versions: list, challenger, compare on a
later slice, promote, rollback, show, history."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from worker import cli
from worker.apps.train import TrainSettings, train
from worker.model.registry import ServingState, serving_state


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert cli.main(argv) == 0
    return capsys.readouterr().out


def test_models_lifecycle_commands(tmp_path: Path, trained_models_dir: Path, capsys) -> None:
    history = trained_models_dir.parent / "history"
    root = tmp_path / "models"
    shutil.copytree(trained_models_dir, root)
    v1 = serving_state(root).champion
    assert v1 is not None
    settings = replace(
        TrainSettings(),
        num_trees=10,
        num_leaves=7,
        max_train_queries=1000,
        min_data_in_leaf=20,
        publish=False,
        refit=False,  # fit on the first 80 %: the last 20 % is a slice it has not seen
    )
    _, metadata = train(history, root, settings)
    v2 = metadata["version"]
    assert metadata["parent"] == v1  # the champion it was trained to succeed
    assert serving_state(root) == ServingState(v1)  # --no-publish: nothing changed

    listed = run(["models", "list", "--models-dir", str(root)], capsys)
    assert v1 in listed and v2 in listed and "champion" in listed

    out = run(
        ["models", "challenger", v2, "--share", "0.3", "--why", "test", "--models-dir", str(root)],
        capsys,
    )
    assert f"challenger {v2} for 30% of users" in out
    assert serving_state(root) == ServingState(v1, v2, 0.3)

    since = metadata["evaluation_window"]["start_ms"]
    compared = run(
        ["models", "compare", v1, v2, "--dataset", str(history), "--since", str(since)]
        + ["--models-dir", str(root)],
        capsys,
    )
    for name in (v1, v2, "recency_category", "session_knn", "McNemar"):
        assert name in compared
    assert f"warning: {v1} was trained on events of this slice" in compared
    assert f"warning: {v2} was trained" not in compared

    run(["models", "promote", "--why", "wins", "--by", "ds", "--models-dir", str(root)], capsys)
    assert serving_state(root) == ServingState(v2)
    run(["models", "rollback", "--why", "hurts", "--models-dir", str(root)], capsys)
    assert serving_state(root) == ServingState(v1, v2, 0.3)

    shown = run(["models", "show", v2, "--models-dir", str(root)], capsys)
    assert f"parent         {v1}" in shown and "promote    by ds: wins" in shown
    logged = run(["models", "history", "--models-dir", str(root)], capsys)
    assert [line.split()[1] for line in logged.splitlines()][-3:] == [
        "challenger",
        "promote",
        "rollback",
    ]


def test_models_refusals_are_one_line_exit_2(tmp_path: Path, trained_models_dir, capsys) -> None:
    root = tmp_path / "models"
    shutil.copytree(trained_models_dir, root)
    assert cli.main(["models", "promote", "--models-dir", str(root)]) == 2
    assert "no challenger to promote" in capsys.readouterr().err
    assert (
        cli.main(["models", "challenger", "nope", "--share", "0.5", "--models-dir", str(root)]) == 2
    )
    assert "no artifact 'nope'" in capsys.readouterr().err
