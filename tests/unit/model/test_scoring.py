"""Scoring backends: lleaves gives LightGBM's predictions, caches its compile, and falls back.

lleaves is part of the test environment (the ``fast`` extra): without it the parity and cache tests
fail instead of skipping, so a CI that lost the extra is noticed.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from worker.model import scoring
from worker.model.scoring import LightGBMScorer, LleavesScorer, make_scorer

N_FEATURES = 20
N_TREES = 100
N_LEAVES = 31


class RecordingLog:
    """Stands in for a structlog logger: records (level, event, keyword arguments)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict]] = []

    def _record(self, level: str):
        return lambda event, **kw: self.records.append((level, event, kw))

    def __getattr__(self, level: str):
        return self._record(level)

    def at(self, level: str) -> list[tuple[str, dict]]:
        return [(event, kw) for lvl, event, kw in self.records if lvl == level]


def _features(rng: np.random.Generator, rows: int) -> np.ndarray:
    """Random features of mixed scales, like the real ones (ratios, log counts, ranks, prices)."""
    scales = np.array([0.01, 0.1, 1, 1, 3, 10, 100, 1e3, 1e4, 1e6] * 2)[:N_FEATURES]
    x = rng.normal(size=(rows, N_FEATURES)) * scales
    x[:, ::4] = np.abs(x[:, ::4])  # some non-negative features
    x[:, 3] = rng.integers(0, 50, size=rows)  # a count-like integer feature
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def ranker(tmp_path_factory):
    """A 100-tree x 31-leaf LambdaRank model in an artifact directory, and its booster."""
    import lightgbm

    rng = np.random.default_rng(7)
    n_queries, per_query = 400, 25
    x = _features(rng, n_queries * per_query)
    signal = (
        np.tanh(x[:, 0] * 50)
        + 0.5 * np.sin(x[:, 5] / 10)
        + (x[:, 7] > 0) * 0.8
        + 0.3 * np.log1p(np.abs(x[:, 9]))
    )
    noisy = signal + rng.normal(scale=0.5, size=signal.shape)
    relevance = np.digitize(noisy, np.quantile(noisy, [0.5, 0.8, 0.95]))  # grades 0-3
    train_set = lightgbm.Dataset(x, label=relevance, group=[per_query] * n_queries)
    params = {
        "objective": "lambdarank",
        "num_leaves": N_LEAVES,
        "min_data_in_leaf": 5,
        "learning_rate": 0.1,
        "num_threads": 1,
        "deterministic": True,
        "verbose": -1,
        "seed": 1,
    }
    booster = lightgbm.train(params, train_set, num_boost_round=N_TREES)
    artifact = tmp_path_factory.mktemp("artifact")
    booster.save_model(str(artifact / "model.txt"))
    booster = lightgbm.Booster(model_file=str(artifact / "model.txt"))  # as serving loads it
    assert booster.num_trees() == N_TREES
    return artifact, booster


@pytest.fixture(scope="module")
def compiled(ranker, tmp_path_factory):
    """The ranker compiled once (into its own cache dir) for the tests that only score."""
    artifact, booster = ranker
    log = RecordingLog()
    scorer = make_scorer(
        artifact, booster, backend="lleaves", cache_dir=tmp_path_factory.mktemp("cache"), log=log
    )
    assert log.at("warning") == []
    return scorer


def _cache_copy(compiled: LleavesScorer, cache_dir: Path) -> Path:
    """A cache directory holding the fixture's compiled object (saves compiling again)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(compiled.cache_file, cache_dir / compiled.cache_file.name)
    return cache_dir


def _split_thresholds(booster) -> dict[int, np.ndarray]:
    """Every numerical split threshold of the model, per feature."""
    found: dict[int, list[float]] = {}

    def walk(node):
        if "split_feature" in node:
            found.setdefault(node["split_feature"], []).append(node["threshold"])
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    return {f: np.unique(np.asarray(t)) for f, t in found.items()}


def _parity_rows(booster, rows: int = 20_000) -> np.ndarray:
    """Random rows, plus edge values: zeros, negatives, huge values, split thresholds exactly."""
    rng = np.random.default_rng(11)
    x = _features(rng, rows)
    quarter = rows // 4
    x[:quarter:7] = 0.0
    x[1:quarter:7] = -np.abs(x[1:quarter:7]) * 10
    x[2:quarter:7] = rng.choice(
        [1e30, -1e30, 3.0e38, -3.0e38, 1e-30, -1e-30], size=x[2:quarter:7].shape
    )
    x[3:quarter:7] *= 1e6
    # exactly on (and one float32 ulp either side of) the thresholds, in a block of rows
    thresholds = _split_thresholds(booster)
    assert thresholds, "the model has no splits"
    block = x[quarter : 3 * quarter]
    for feature, values in thresholds.items():
        v32 = values.astype(np.float32)
        candidates = np.concatenate(
            [v32, np.nextafter(v32, np.float32(np.inf)), np.nextafter(v32, np.float32(-np.inf))]
        )
        pick = rng.random(block.shape[0]) < 0.6
        block[pick, feature] = rng.choice(candidates, size=int(pick.sum()))
    return x


def test_lleaves_matches_booster_predict(ranker, compiled):
    _, booster = ranker
    assert isinstance(compiled, LleavesScorer), "lleaves is not installed: pip install -e .[fast]"
    assert compiled.name == "lleaves"
    x = _parity_rows(booster)
    assert x.shape == (20_000, N_FEATURES) and x.dtype == np.float32
    expected = booster.predict(x, num_threads=1)
    got = compiled.score(x)
    assert got.dtype == np.float64 and got.shape == (x.shape[0],)
    assert np.all(np.isfinite(got))
    assert np.std(expected) > 0.1  # the model is not a constant
    assert np.max(np.abs(got - expected)) < 1e-9
    # batch sizes the worker uses, and threads, give the same numbers
    for rows in (1, 50, 500):
        np.testing.assert_allclose(compiled.score(x[:rows]), expected[:rows], rtol=0, atol=1e-9)
    assert compiled.score(x[:0]).shape == (0,)


def test_lleaves_with_threads_matches(ranker, compiled, tmp_path):
    artifact, booster = ranker
    x = _parity_rows(booster, 5_000)
    cache = _cache_copy(compiled, tmp_path)
    scorer = make_scorer(artifact, booster, backend="lleaves", num_threads=2, cache_dir=cache)
    assert scorer.name == "lleaves" and scorer.from_cache
    np.testing.assert_allclose(scorer.score(x), booster.predict(x), rtol=0, atol=1e-9)


def test_auto_picks_lleaves_when_installed(ranker, compiled):
    artifact, booster = ranker
    log = RecordingLog()
    # the compiled fixture filled a cache; point at it so this test does not compile again
    scorer = make_scorer(artifact, booster, cache_dir=compiled.cache_file.parent, log=log)
    assert scorer.name == "lleaves"
    assert isinstance(scorer, LleavesScorer)
    assert log.at("warning") == []


def test_lightgbm_backend(ranker):
    artifact, booster = ranker
    log = RecordingLog()
    scorer = make_scorer(artifact, booster, backend="lightgbm", log=log)
    assert isinstance(scorer, LightGBMScorer) and scorer.name == "lightgbm"
    x = _features(np.random.default_rng(1), 100)
    np.testing.assert_array_equal(scorer.score(x), booster.predict(x, num_threads=1))
    assert log.at("warning") == []
    assert not (artifact / scoring.CACHE_SUBDIR).exists()  # nothing compiled


@pytest.mark.parametrize("backend", ["lleaves", "auto"])
def test_missing_lleaves_falls_back_to_lightgbm(ranker, monkeypatch, backend):
    artifact, booster = ranker
    monkeypatch.setitem(sys.modules, "lleaves", None)  # makes `import lleaves` raise ImportError
    log = RecordingLog()
    scorer = make_scorer(artifact, booster, backend=backend, log=log)
    assert isinstance(scorer, LightGBMScorer) and scorer.name == "lightgbm"
    x = _features(np.random.default_rng(2), 10)
    np.testing.assert_array_equal(scorer.score(x), booster.predict(x, num_threads=1))
    warnings = log.at("warning")
    if backend == "lleaves":  # asked for explicitly: say why it is not used, once
        assert len(warnings) == 1
        event, kw = warnings[0]
        assert event == "scoring_backend_fallback"
        assert kw["requested"] == "lleaves" and "not importable" in kw["reason"]
    else:  # auto without the extra is a normal configuration
        assert warnings == []


def test_failing_compile_falls_back(ranker, monkeypatch, tmp_path):
    artifact, booster = ranker

    def broken(*args, **kwargs):
        raise RuntimeError("LLVM exploded")

    monkeypatch.setattr(scoring, "LleavesScorer", broken)
    log = RecordingLog()
    scorer = make_scorer(artifact, booster, backend="lleaves", cache_dir=tmp_path, log=log)
    assert scorer.name == "lightgbm"
    assert [event for event, _ in log.at("warning")] == ["scoring_backend_fallback"]
    assert "LLVM exploded" in log.at("warning")[0][1]["reason"]


def test_unknown_backend_is_rejected(ranker):
    artifact, booster = ranker
    with pytest.raises(ValueError, match="unknown scoring backend"):
        make_scorer(artifact, booster, backend="onnx")


def test_compiled_object_is_cached_and_reused(ranker, compiled):
    artifact, booster = ranker
    first = compiled  # compiled into an empty cache directory by the fixture
    cache = first.cache_file.parent
    assert first.name == "lleaves" and not first.from_cache
    files = sorted(p.name for p in cache.iterdir())
    assert files == [first.cache_file.name]  # no temp files left behind
    assert first.cache_file.name.startswith(scoring.model_sha256(artifact / "model.txt"))
    mtime = first.cache_file.stat().st_mtime_ns

    started = time.perf_counter()
    second = make_scorer(artifact, booster, backend="lleaves", cache_dir=cache)
    elapsed = time.perf_counter() - started
    assert second.name == "lleaves" and second.from_cache
    assert second.cache_file == first.cache_file
    assert second.cache_file.stat().st_mtime_ns == mtime  # loaded, not rewritten
    assert elapsed < 1.0 and second.load_seconds < first.load_seconds
    x = _parity_rows(booster, 2_000)
    np.testing.assert_array_equal(second.score(x), first.score(x))


def test_a_changed_model_gets_its_own_cache_entry(ranker, compiled, tmp_path):
    import lightgbm

    artifact, booster = ranker
    cache = _cache_copy(compiled, tmp_path / "cache")
    other = tmp_path / "other"
    other.mkdir()
    smaller = lightgbm.Booster(model_str=booster.model_to_string(num_iteration=10))
    smaller.save_model(str(other / "model.txt"))
    scorer = make_scorer(other, smaller, backend="lleaves", cache_dir=cache)
    assert scorer.name == "lleaves" and not scorer.from_cache
    assert len(list(cache.glob("*.o"))) == 2
    x = _features(np.random.default_rng(3), 1_000)
    np.testing.assert_allclose(scorer.score(x), smaller.predict(x), rtol=0, atol=1e-9)


def test_default_cache_dir_is_in_the_artifact(ranker, compiled, tmp_path):
    artifact, booster = ranker
    copy = tmp_path / "artifact"
    copy.mkdir()
    shutil.copy(artifact / "model.txt", copy / "model.txt")
    assert scoring.default_cache_dir(copy) == copy / scoring.CACHE_SUBDIR
    _cache_copy(compiled, copy / scoring.CACHE_SUBDIR)
    scorer = make_scorer(copy, booster, backend="lleaves")
    assert scorer.cache_file.parent == copy / scoring.CACHE_SUBDIR
    assert scorer.from_cache


def test_read_only_artifact_caches_in_home(tmp_path, monkeypatch):
    """An artifact dir where the cache cannot be created (here a file stands where the cache
    directory would go, which stops root too, unlike a read-only mode) caches in the home."""
    unwritable = tmp_path / "ro"
    unwritable.mkdir()
    (unwritable / scoring.CACHE_SUBDIR).write_text("not a directory")
    monkeypatch.setattr(scoring, "USER_CACHE_DIR", tmp_path / "home-cache")
    assert scoring.default_cache_dir(unwritable) == tmp_path / "home-cache"


def test_unusable_cache_dirs_mean_no_cache(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setattr(scoring, "USER_CACHE_DIR", blocker / "cache")
    assert scoring.default_cache_dir(blocker) is None


def test_corrupt_cached_object_is_not_served(ranker, tmp_path):
    """A cache file holding a different model's code fails the self-check: LightGBM serves."""
    import lightgbm

    artifact, booster = ranker
    cache = tmp_path / "cache"
    wrong_dir = tmp_path / "wrong"
    wrong_dir.mkdir()
    wrong = lightgbm.Booster(model_str=booster.model_to_string(num_iteration=5))
    wrong.save_model(str(wrong_dir / "model.txt"))
    wrong_scorer = make_scorer(wrong_dir, wrong, backend="lleaves", cache_dir=tmp_path / "w")
    target = cache / scoring.cache_file_name(artifact / "model.txt")
    cache.mkdir()
    target.write_bytes(wrong_scorer.cache_file.read_bytes())

    log = RecordingLog()
    scorer = make_scorer(artifact, booster, backend="lleaves", cache_dir=cache, log=log)
    assert scorer.name == "lightgbm"
    assert [event for event, _ in log.at("warning")] == ["scoring_backend_fallback"]
    assert not target.exists()  # dropped, the next start compiles afresh


def test_concurrent_compiles_leave_one_complete_object(ranker, tmp_path):
    """Two processes compiling the same model into one cache: both work, one file remains."""
    import subprocess

    artifact, _ = ranker
    cache = tmp_path / "cache"
    code = (
        "import sys, lightgbm, numpy as np; from pathlib import Path;"
        "from worker.model.scoring import make_scorer;"
        "a = Path(sys.argv[1]); b = lightgbm.Booster(model_file=str(a / 'model.txt'));"
        "s = make_scorer(a, b, backend='lleaves', cache_dir=Path(sys.argv[2]));"
        "assert s.name == 'lleaves', s.name; print(s.from_cache)"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(artifact), str(cache)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert [p.suffix for p in cache.iterdir()] == [".o"]
    third = make_scorer(artifact, ranker[1], backend="lleaves", cache_dir=cache)
    assert third.from_cache


# -- precompile: compiled when the artifact is made, loaded at a worker's start -----------------


@pytest.fixture
def small_artifact(ranker, tmp_path, monkeypatch):
    """An artifact directory holding a 10-tree cut of the ranker (quick to compile), and its
    booster; the user's cache is a fresh temp dir, never the developer's."""
    import lightgbm

    _, booster = ranker
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    lightgbm.Booster(model_str=booster.model_to_string(num_iteration=10)).save_model(
        str(artifact / "model.txt")
    )
    monkeypatch.setattr(scoring, "USER_CACHE_DIR", tmp_path / "home-cache")
    return artifact, lightgbm.Booster(model_file=str(artifact / "model.txt"))


@pytest.fixture
def compiles(monkeypatch) -> list[str]:
    """Records every lleaves compile (model -> LLVM module); loading a cached object is none."""
    import lleaves.compiler

    calls: list[str] = []
    real = lleaves.compiler.compile_to_module

    def counting(model_file, *args, **kwargs):
        calls.append(str(model_file))
        return real(model_file, *args, **kwargs)

    monkeypatch.setattr(lleaves.compiler, "compile_to_module", counting)
    return calls


def test_precompile_writes_the_object_a_worker_then_loads_without_compiling(
    small_artifact, compiles
):
    artifact, booster = small_artifact
    log = RecordingLog()
    path = scoring.precompile(artifact, log=log)
    assert path == artifact / scoring.CACHE_SUBDIR / scoring.cache_file_name(artifact / "model.txt")
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    assert len(compiles) == 1
    [(event, kw)] = log.at("info")
    assert event == "lleaves_precompiled" and kw["cache_file"] == str(path)
    assert kw["already_compiled"] is False and kw["compiled_s"] > 0
    assert log.at("warning") == []

    log = RecordingLog()
    scorer = make_scorer(artifact, booster, backend="lleaves", log=log)  # as the worker does
    assert len(compiles) == 1  # loaded, not compiled
    assert isinstance(scorer, LleavesScorer) and scorer.from_cache and scorer.cache_file == path
    assert log.at("warning") == []
    [(event, kw)] = log.at("info")
    assert event == "scoring_backend" and kw["backend"] == "lleaves"
    assert kw["loaded_from_cache"] is True and "compiled_s" not in kw
    assert 0 <= kw["loaded_s"] <= kw["ready_s"]
    x = _features(np.random.default_rng(4), 500)
    np.testing.assert_allclose(scorer.score(x), booster.predict(x), rtol=0, atol=1e-9)

    log = RecordingLog()
    assert scoring.precompile(artifact, log=log) == path  # already there: kept
    assert len(compiles) == 1
    assert log.at("info")[0][1]["already_compiled"] is True


def test_precompiled_object_is_loaded_from_a_read_only_artifact(
    small_artifact, compiles, monkeypatch
):
    """An artifact published precompiled may be mounted read-only: its object is still used."""
    artifact, booster = small_artifact
    path = scoring.precompile(artifact)
    monkeypatch.setattr(scoring, "_writable_dir", lambda path: False)
    scorer = make_scorer(artifact, booster, backend="lleaves", log=RecordingLog())
    assert scorer.name == "lleaves" and scorer.from_cache and scorer.cache_file == path
    assert len(compiles) == 1


@pytest.mark.parametrize("elsewhere", [False, True], ids=["not-precompiled", "other-platform"])
def test_a_start_without_the_object_compiles_and_says_why(small_artifact, compiles, elsewhere):
    artifact, booster = small_artifact
    name = scoring.cache_file_name(artifact / "model.txt")
    if elsewhere:  # an object of this model with another build key: another CPU or lleaves
        (artifact / scoring.CACHE_SUBDIR).mkdir()
        (artifact / scoring.CACHE_SUBDIR / f"{name.split('-')[0]}-0123456789abcdef.o").touch()
    log = RecordingLog()
    scorer = make_scorer(artifact, booster, backend="lleaves", log=log)
    assert scorer.name == "lleaves" and not scorer.from_cache
    assert scorer.cache_file == artifact / scoring.CACHE_SUBDIR / name  # cached for next time
    assert len(compiles) == 1
    [(event, kw)] = log.at("warning")
    assert event == "lleaves_cache_miss"
    assert ("another platform" in kw["cause"]) == elsewhere
    assert ("not precompiled" in kw["cause"]) != elsewhere
    assert kw["avoid_with"] == f"worker compile --models-dir {artifact}"
    [(event, kw)] = log.at("info")
    assert event == "scoring_backend" and kw["loaded_from_cache"] is False
    assert 0 < kw["compiled_s"] <= kw["ready_s"] and "loaded_s" not in kw


def test_precompile_without_lleaves_does_nothing(small_artifact, monkeypatch):
    artifact, _ = small_artifact
    monkeypatch.setitem(sys.modules, "lleaves", None)  # makes `import lleaves` raise ImportError
    log = RecordingLog()
    assert scoring.precompile(artifact, log=log) is None
    assert not (artifact / scoring.CACHE_SUBDIR).exists()
    assert [event for event, _ in log.at("info")] == ["lleaves_precompile_skipped"]
    assert log.at("warning") == []


def test_a_failing_precompile_warns_and_returns_none(small_artifact, monkeypatch):
    artifact, _ = small_artifact

    def broken(*args, **kwargs):
        raise RuntimeError("LLVM exploded")

    monkeypatch.setattr(scoring, "LleavesScorer", broken)
    log = RecordingLog()
    assert scoring.precompile(artifact, log=log) is None
    [(event, kw)] = log.at("warning")
    assert event == "lleaves_precompile_failed" and "LLVM exploded" in kw["reason"]


# -- `worker compile` -------------------------------------------------------------------------


def _models_dir(artifact: Path, root: Path) -> Path:
    """A models directory whose LATEST names a copy of ``artifact`` (with a metadata.json)."""
    models = root / "models"
    version = models / "v1"
    version.mkdir(parents=True)
    shutil.copy(artifact / "model.txt", version / "model.txt")
    (version / "metadata.json").write_text('{"version": "v1"}\n')
    (models / "LATEST").write_text("v1\n")
    return models


def test_worker_compile_precompiles_the_served_artifact(small_artifact, tmp_path, capsys):
    from worker import cli

    models = _models_dir(small_artifact[0], tmp_path)
    assert cli.main(["compile", "--models-dir", str(models), "--log-format", "json"]) == 0
    out = capsys.readouterr().out
    path = Path(out.strip())
    assert path.parent == models / "v1" / scoring.CACHE_SUBDIR and path.is_file()
    assert path.name == scoring.cache_file_name(models / "v1" / "model.txt")


def test_worker_compile_without_lleaves_exits_0_and_says_so(
    small_artifact, tmp_path, capsys, monkeypatch
):
    from worker import cli

    models = _models_dir(small_artifact[0], tmp_path)
    monkeypatch.setitem(sys.modules, "lleaves", None)
    assert cli.main(["compile", "--models-dir", str(models / "v1"), "--log-format", "json"]) == 0
    assert "nothing compiled" in capsys.readouterr().out
    assert not (models / "v1" / scoring.CACHE_SUBDIR).exists()


def test_worker_compile_without_a_model_fails(tmp_path, capsys):
    from worker import cli

    assert cli.main(["compile", "--models-dir", str(tmp_path), "--log-format", "json"]) == 2
    assert "no model at" in capsys.readouterr().err
