"""The model artifact: catalogue tables, the LightGBM ranker, and how they are stored.

An artifact is a directory ``<models>/<version>/`` holding

* ``model.txt``: the LightGBM booster (text format);
* ``tables.npz``: the catalogue and its statistics from the data the served model was fit on
  (product ids, categories, prices, popularity, co-visitation neighbours, per-category and global
  top lists);
* ``.lleaves/``: the model compiled for a platform (``worker train`` and ``worker compile``);
* ``metadata.json``: version, feature names, training window, evaluation metrics, settings.

``<models>/LATEST`` names the version to serve. Loading checks that the feature names the booster
was trained with are the ones :mod:`worker.core.features` builds today.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.core.catalogue import CatalogueTables
from worker.core.errors import ModelLoadError

LATEST_FILE = "LATEST"
ARTIFACT_FORMAT = 1


@dataclass(frozen=True)
class ModelArtifact:
    """A loaded artifact: tables, booster (``lightgbm.Booster``) and metadata."""

    path: Path
    version: str
    tables: CatalogueTables
    booster: Any
    metadata: dict[str, Any]

    @property
    def feature_names(self) -> list[str]:
        return list(self.metadata["feature_names"])


def resolve_artifact_dir(models_dir: Path) -> Path:
    """``models_dir`` itself if it is an artifact, else the version ``models_dir/LATEST`` names.

    Raises:
        ModelLoadError: neither an artifact nor a models directory with a valid LATEST.
    """
    if (models_dir / "metadata.json").is_file():
        return models_dir
    latest = models_dir / LATEST_FILE
    if not latest.is_file():
        raise ModelLoadError(
            f"no model at {models_dir}: neither metadata.json nor {LATEST_FILE} "
            "(train one with `worker train`)"
        )
    version = latest.read_text(encoding="utf-8").strip()
    artifact_dir = models_dir / version
    if not (artifact_dir / "metadata.json").is_file():
        raise ModelLoadError(f"{latest} names {version!r} but {artifact_dir} is not an artifact")
    return artifact_dir


def read_metadata(models_dir: Path) -> dict[str, Any]:
    """Metadata of the artifact (without loading the booster)."""
    artifact_dir = resolve_artifact_dir(models_dir)
    try:
        metadata: dict[str, Any] = json.loads(
            (artifact_dir / "metadata.json").read_text(encoding="utf-8")
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"unreadable metadata in {artifact_dir}: {exc}") from exc
    return metadata


def load_tables(models_dir: Path) -> CatalogueTables:
    """Catalogue tables of the artifact (without loading the booster)."""
    artifact_dir = resolve_artifact_dir(models_dir)
    try:
        return CatalogueTables.load(artifact_dir / "tables.npz")
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"unreadable tables in {artifact_dir}: {exc}") from exc


def load_artifact(models_dir: Path, *, expected_features: list[str] | None = None) -> ModelArtifact:
    """Load an artifact for serving.

    Raises:
        ModelLoadError: missing or unreadable files, or feature names that do not match.
    """
    import lightgbm  # heavy import, only where a booster is needed

    from worker.model.lightgbm_log import route_lightgbm_log

    route_lightgbm_log(lightgbm)

    artifact_dir = resolve_artifact_dir(models_dir)
    metadata = read_metadata(artifact_dir)
    if metadata.get("format") != ARTIFACT_FORMAT:
        raise ModelLoadError(
            f"artifact format {metadata.get('format')!r} in {artifact_dir}, "
            f"this worker reads format {ARTIFACT_FORMAT}"
        )
    if expected_features is not None and metadata.get("feature_names") != expected_features:
        raise ModelLoadError(
            f"artifact {artifact_dir} was trained on features {metadata.get('feature_names')}, "
            f"this worker builds {expected_features}"
        )
    try:
        booster = lightgbm.Booster(model_file=str(artifact_dir / "model.txt"))
    except Exception as exc:  # lightgbm raises LightGBMError or OSError
        raise ModelLoadError(f"cannot load booster from {artifact_dir}: {exc}") from exc
    return ModelArtifact(
        path=artifact_dir,
        version=str(metadata["version"]),
        tables=load_tables(artifact_dir),
        booster=booster,
        metadata=metadata,
    )


def save_artifact(
    models_dir: Path,
    version: str,
    booster: Any,
    tables: CatalogueTables,
    metadata: dict[str, Any],
    *,
    make_latest: bool = True,
) -> Path:
    """Write an artifact directory atomically (temp dir + rename) and point LATEST at it."""
    models_dir.mkdir(parents=True, exist_ok=True)
    final = models_dir / version
    tmp = models_dir / f".{version}.tmp"
    tmp.mkdir(parents=True, exist_ok=False)
    booster.save_model(str(tmp / "model.txt"))
    tables.save(tmp / "tables.npz")
    from worker.model.registry import content_hash  # the registry builds on this module

    full_metadata = {
        **metadata,
        "format": ARTIFACT_FORMAT,
        "version": version,
        "content_sha256": content_hash(tmp),
    }
    (tmp / "metadata.json").write_text(json.dumps(full_metadata, indent=2) + "\n")
    os.replace(tmp, final)
    if make_latest:
        point_latest(models_dir, version)
    return final


def point_latest(models_dir: Path, version: str) -> None:
    """Make ``version`` the served artifact of ``models_dir`` (an atomic rename of LATEST)."""
    latest_tmp = models_dir / f".{LATEST_FILE}.tmp"
    latest_tmp.write_text(version + "\n")
    os.replace(latest_tmp, models_dir / LATEST_FILE)
