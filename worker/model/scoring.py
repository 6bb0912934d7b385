"""Scoring backends: LightGBM's ``Booster.predict`` or the same model compiled with lleaves.

:func:`make_scorer` picks one. ``"lightgbm"`` always works; ``"lleaves"`` compiles ``model.txt`` to
native code with LLVM (about 3-5x more rows/s on one core, equal predictions to ~1e-15, see
``/work/shared/design.md``); ``"auto"`` uses lleaves when it is installed (the ``fast`` extra).
Whatever is asked for, a missing or broken lleaves never stops the worker: it logs one
``scoring_backend_fallback`` warning and scores with LightGBM.

Compiling a production model takes tens of seconds, so the compiled object file is cached, keyed
by the sha256 of ``model.txt`` and everything else the machine code depends on (lleaves and
llvmlite versions, compile options, the host CPU and its features: an object compiled for one CPU
may not run on another, and artifact directories can be shared between machines). The cache file
is written to a private temp file and renamed into place, so concurrent workers compiling the same
model at once never read a half-written object. A second start loads it in well under a second.

So that no worker compiles at all, :func:`precompile` compiles the model into the artifact's own
cache where the artifact is made or published (``worker compile``; for an artifact copied to
machines of another CPU family, run it on one of them: the key includes the host CPU). A worker
that finds no object for its platform still compiles and caches it, after a ``lleaves_cache_miss``
warning that names the cause and that command. The ``scoring_backend`` line says how the scorer
was had: ``loaded_from_cache`` with ``loaded_s``, or ``compiled_s``, and ``ready_s`` in all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

BACKENDS = ("auto", "lightgbm", "lleaves")
MODEL_FILE = "model.txt"
#: Bump when the cache file name or contents change meaning.
CACHE_FORMAT = 1
CACHE_SUBDIR = ".lleaves"
USER_CACHE_DIR = Path("~/.cache/worker-lleaves")
#: lleaves.Model.compile options. fp64 keeps predictions equal to LightGBM's (which works in
#: double); the other values are lleaves' defaults, stated so that they are part of the cache key.
COMPILE_OPTIONS: dict[str, Any] = {
    "raw_score": False,
    "fblocksize": 34,
    "fcodemodel": "large",
    "finline": True,
    "use_fp64": True,
}
#: Largest tolerated |lleaves - LightGBM| on the start-up self-check.
SELF_CHECK_TOLERANCE = 1e-9
#: The command that compiles an artifact ahead of time (named by the cache-miss warning).
PRECOMPILE_COMMAND = "worker compile --models-dir {artifact_dir}"


class BoosterScorer:
    """Scores feature matrices with ``lightgbm.Booster.predict`` (one call per batch)."""

    def __init__(self, booster: Any, *, num_threads: int = 1) -> None:
        self._booster = booster
        self._num_threads = num_threads

    def score(self, features: np.ndarray) -> np.ndarray:
        """Scores, float64 of shape ``(rows,)``."""
        if features.shape[0] == 0:
            return np.zeros(0, dtype=np.float64)
        return np.asarray(
            self._booster.predict(features, num_threads=self._num_threads), dtype=np.float64
        )


class LightGBMScorer(BoosterScorer):
    """``Booster.predict``, one call per batch (see :class:`BoosterScorer`)."""

    name = "lightgbm"


class LleavesScorer:
    """The booster compiled to native code with lleaves; ``score`` is one call per batch.

    Attributes:
        name: ``"lleaves"``.
        cache_file: the compiled object file, or None when no cache directory was usable.
        from_cache: True when the object was loaded from the cache instead of compiled.
        load_seconds: time to compile or load.
    """

    name = "lleaves"

    def __init__(
        self,
        model_file: Path,
        *,
        num_threads: int = 1,
        cache_dir: Path | None = None,
    ) -> None:
        import lleaves  # optional dependency: the `fast` extra

        self._num_threads = max(1, int(num_threads))
        self.model_file = Path(model_file)
        self.cache_file = (
            cache_dir / cache_file_name(self.model_file) if cache_dir is not None else None
        )
        started = time.perf_counter()
        model = lleaves.Model(model_file=str(self.model_file))
        self.from_cache = self.cache_file is not None and self.cache_file.is_file()
        if self.cache_file is None:
            model.compile(**COMPILE_OPTIONS)
        elif self.from_cache:
            model.compile(cache=str(self.cache_file), **COMPILE_OPTIONS)
        else:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            _compile_into_cache(model, self.cache_file)
        self.load_seconds = time.perf_counter() - started
        self._model = model
        self.num_feature = int(model.num_feature())

    def score(self, features: np.ndarray) -> np.ndarray:
        """Scores, float64 of shape ``(rows,)``."""
        rows = features.shape[0]
        if rows == 0:
            return np.zeros(0, dtype=np.float64)
        # One thread per at least a few hundred rows: lleaves starts a thread pool per call.
        n_jobs = min(self._num_threads, max(1, rows // 256))
        return np.asarray(self._model.predict(features, n_jobs=n_jobs), dtype=np.float64)


def _compile_into_cache(model: Any, cache_file: Path) -> None:
    """Compile, letting lleaves dump the object to a private temp file, then rename it in place.

    Two processes compiling at once each write their own temp file; both renames are atomic and
    the contents are identical, so a reader sees either no file or a complete one.
    """
    fd, tmp_name = tempfile.mkstemp(
        dir=cache_file.parent, prefix=f".{cache_file.name}.", suffix=".tmp"
    )
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # lleaves only writes the cache when the path does not exist yet
    try:
        model.compile(cache=str(tmp), **COMPILE_OPTIONS)
        if tmp.is_file():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, cache_file)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def lleaves_available() -> bool:
    """Whether lleaves (and llvmlite) can be imported."""
    try:
        import lleaves  # noqa: F401
    except Exception:  # ImportError, or a broken llvmlite failing on import
        return False
    return True


def _package_version(name: str) -> str:
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def _host_cpu() -> tuple[str, str]:
    import llvmlite.binding as llvm

    llvm.initialize()
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:  # what lleaves does when LLVM cannot detect them
        features = ""
    return llvm.get_host_cpu_name(), features


def model_sha256(model_file: Path) -> str:
    digest = hashlib.sha256()
    with open(model_file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_file_name(model_file: Path) -> str:
    """``<model sha256>-<build key>.o``: the model, and what the machine code depends on."""
    cpu_name, cpu_features = _host_cpu()
    build = json.dumps(
        {
            "format": CACHE_FORMAT,
            "lleaves": _package_version("lleaves"),
            "llvmlite": _package_version("llvmlite"),
            "options": COMPILE_OPTIONS,
            "cpu": cpu_name,
            "cpu_features": cpu_features,
        },
        sort_keys=True,
    )
    build_key = hashlib.sha256(build.encode()).hexdigest()[:16]
    return f"{model_sha256(model_file)}-{build_key}.o"


def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe."):
            pass
    except OSError:
        return False
    return True


def default_cache_dir(artifact_dir: Path) -> Path | None:
    """``<artifact_dir>/.lleaves/`` if writable, else ``~/.cache/worker-lleaves/``, else None."""
    for candidate in (artifact_dir / CACHE_SUBDIR, USER_CACHE_DIR.expanduser()):
        if _writable_dir(candidate):
            return candidate
    return None


def _cached_or_default_dir(artifact_dir: Path, log: Any) -> Path | None:
    """The cache directory :func:`make_scorer` uses by default.

    A directory that already holds this model's object for this host is used even if it is not
    writable: an artifact precompiled when it was published may be mounted read-only. Otherwise
    this start compiles: a ``lleaves_cache_miss`` warning says why and how to avoid it, and the
    object goes to :func:`default_cache_dir`.
    """
    name = cache_file_name(artifact_dir / MODEL_FILE)
    own = artifact_dir / CACHE_SUBDIR
    for candidate in (own, USER_CACHE_DIR.expanduser()):
        if (candidate / name).is_file():
            return candidate
    log.warning(
        "lleaves_cache_miss",
        cause=_miss_cause(own, name),
        consequence="this start compiles the model (tens of seconds for a production model)",
        avoid_with=PRECOMPILE_COMMAND.format(artifact_dir=artifact_dir),
        cache_file=str(own / name),
    )
    return default_cache_dir(artifact_dir)


def _miss_cause(cache_dir: Path, name: str) -> str:
    """Why ``cache_dir`` has no object ``name``: never precompiled, or compiled elsewhere."""
    model_hash = name.split("-", 1)[0]
    if cache_dir.is_dir() and any(cache_dir.glob(f"{model_hash}-*.o")):
        return (
            "the artifact was compiled on another platform: its objects for this model have "
            "another build key (host CPU or its features, or the lleaves/llvmlite versions differ)"
        )
    return "the artifact was not precompiled: no compiled object for this model in its cache"


def _self_check(scorer: LleavesScorer, booster: Any, n_features: int) -> float:
    """Largest |lleaves - LightGBM| on a fixed probe of rows of several scales."""
    rng = np.random.default_rng(0)
    probe = np.concatenate(
        [
            np.zeros((1, n_features)),
            rng.normal(size=(64, n_features)),
            rng.normal(scale=100.0, size=(64, n_features)),
            rng.uniform(-1e6, 1e6, size=(64, n_features)),
        ]
    ).astype(np.float32)
    expected = np.asarray(booster.predict(probe, num_threads=1), dtype=np.float64)
    return float(np.max(np.abs(scorer.score(probe) - expected)))


def make_scorer(
    artifact_dir: Path,
    booster: Any,
    *,
    backend: str = "auto",
    num_threads: int = 1,
    cache_dir: Path | None = None,
    log: Any = None,
) -> LightGBMScorer | LleavesScorer:
    """The scorer for an artifact: ``backend`` is ``"lightgbm"``, ``"lleaves"`` or ``"auto"``.

    ``"auto"`` compiles with lleaves when it is installed and otherwise scores with LightGBM
    silently; ``"lleaves"`` falls back to LightGBM with one ``scoring_backend_fallback`` warning.
    A compile that fails, or a compiled model whose start-up self-check disagrees with the
    booster, also falls back with that warning. Never raises because of lleaves.

    Args:
        artifact_dir: the artifact directory (holds ``model.txt``).
        booster: its loaded ``lightgbm.Booster``.
        num_threads: threads per ``score`` call.
        cache_dir: where compiled objects are cached; default: whichever of
            ``<artifact_dir>/.lleaves/`` and ``~/.cache/worker-lleaves/`` holds this model's
            object for this host, else the first writable of them (after a
            ``lleaves_cache_miss`` warning).
        log: a structlog-style logger (keyword arguments); default ``structlog.get_logger()``.

    Raises:
        ValueError: an unknown backend name.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown scoring backend {backend!r}, expected one of {BACKENDS}")
    if log is None:
        import structlog

        log = structlog.get_logger()
    if backend == "lightgbm" or (backend == "auto" and not lleaves_available()):
        log.info("scoring_backend", backend="lightgbm", requested=backend)
        return LightGBMScorer(booster, num_threads=num_threads)

    def fallback(reason: str) -> LightGBMScorer:
        log.warning("scoring_backend_fallback", requested=backend, reason=reason)
        return LightGBMScorer(booster, num_threads=num_threads)

    try:
        import lleaves  # noqa: F401
    except Exception as exc:
        return fallback(f"lleaves is not importable ({type(exc).__name__}: {exc})")

    artifact_dir = Path(artifact_dir)
    model_file = artifact_dir / MODEL_FILE
    started = time.perf_counter()
    try:
        if cache_dir is None:
            cache_dir = _cached_or_default_dir(artifact_dir, log)
        elif not _writable_dir(Path(cache_dir)):
            log.warning("lleaves_cache_unusable", cache_dir=str(cache_dir))
            cache_dir = None
        scorer = LleavesScorer(model_file, num_threads=num_threads, cache_dir=cache_dir)
        n_features = int(booster.num_feature())
        if scorer.num_feature != n_features:
            return fallback(
                f"compiled model has {scorer.num_feature} features, booster {n_features}"
            )
        error = _self_check(scorer, booster, n_features)
    except Exception as exc:  # a compile error, a broken llvmlite, an unreadable cache...
        return fallback(f"lleaves failed ({type(exc).__name__}: {exc})")
    if not error <= SELF_CHECK_TOLERANCE:
        if scorer.cache_file is not None:
            with contextlib.suppress(OSError):
                scorer.cache_file.unlink()  # never trust that object again
        return fallback(f"lleaves predictions differ from LightGBM by {error:.3g}")
    how = "loaded_s" if scorer.from_cache else "compiled_s"
    log.info(
        "scoring_backend",
        backend="lleaves",
        requested=backend,
        loaded_from_cache=scorer.from_cache,
        **{how: round(scorer.load_seconds, 3)},
        ready_s=round(time.perf_counter() - started, 3),
        cache_file=str(scorer.cache_file) if scorer.cache_file else None,
    )
    return scorer


def precompile(artifact_dir: Path, *, log: Any = None) -> Path | None:
    """Compile the artifact's model with lleaves into its own cache, ``<artifact_dir>/.lleaves/``.

    Meant for where the artifact is made or published (the end of training; ``worker compile``
    for an artifact copied to machines of another CPU family, run on one of them), so that a
    worker of the same platform loads the object in well under a second instead of compiling it
    at its first start. Same cache key and atomic write as :func:`make_scorer`; an object already
    there is loaded, not rebuilt. The result passes the start-up self-check against LightGBM, or
    is deleted.

    Returns:
        The compiled object's path; None when lleaves is not installed (the ``fast`` extra: the
        worker then scores with LightGBM) or compiling failed (logged as a
        ``lleaves_precompile_failed`` warning; the worker would compile at its start, or fall
        back to LightGBM). Never raises because of lleaves.
    """
    if log is None:
        import structlog

        log = structlog.get_logger()
    artifact_dir = Path(artifact_dir)
    if not lleaves_available():
        log.info("lleaves_precompile_skipped", reason="lleaves is not installed (the fast extra)")
        return None
    started = time.perf_counter()
    try:
        import lightgbm

        from worker.model.lightgbm_log import route_lightgbm_log

        route_lightgbm_log(lightgbm)

        booster = lightgbm.Booster(model_file=str(artifact_dir / MODEL_FILE))
        scorer = LleavesScorer(artifact_dir / MODEL_FILE, cache_dir=artifact_dir / CACHE_SUBDIR)
        error = _self_check(scorer, booster, int(booster.num_feature()))
    except Exception as exc:  # no model, an unwritable artifact, a compile error...
        log.warning(
            "lleaves_precompile_failed",
            artifact=str(artifact_dir),
            reason=f"{type(exc).__name__}: {exc}",
        )
        return None
    cache_file = scorer.cache_file
    assert cache_file is not None  # a cache directory was given
    if not error <= SELF_CHECK_TOLERANCE:
        with contextlib.suppress(OSError):
            cache_file.unlink()
        log.warning(
            "lleaves_precompile_failed",
            artifact=str(artifact_dir),
            reason=f"lleaves predictions differ from LightGBM by {error:.3g}",
        )
        return None
    log.info(
        "lleaves_precompiled",
        artifact=str(artifact_dir),
        cache_file=str(cache_file),
        already_compiled=scorer.from_cache,
        compiled_s=None if scorer.from_cache else round(scorer.load_seconds, 3),
        seconds=round(time.perf_counter() - started, 3),
    )
    return cache_file
