"""The model registry: the artifacts of a models directory, which of them serve, and the history
of every change to that.

A models directory (a local path or a shared volume: every worker and the monitor mount the same
one) holds

* one artifact directory per version (:mod:`worker.model.artifact`), whose ``metadata.json``
  names its content hash, its parent (the champion when it was trained), its training window
  and its evaluation metrics;
* ``LATEST``: the champion's version (one line; what a worker serves by default, as before);
* ``CHALLENGER``: ``{"version": ..., "share": ...}`` when a challenger serves a share of the
  users, absent otherwise;
* ``HISTORY.jsonl``: one JSON line per change of the serving state (publish, challenger,
  promote, rollback), with who, when, why, and the state before and after.

Every change is written atomically (a temporary file renamed over the old one) and only then
appended to the history, so a reader never sees half a state. Workers pick a change up by
polling the two pointer files (see :mod:`worker.apps.serve`).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from worker.core.errors import ModelLoadError
from worker.model.artifact import LATEST_FILE, point_latest

CHALLENGER_FILE = "CHALLENGER"
HISTORY_FILE = "HISTORY.jsonl"
#: Files whose bytes make an artifact's content hash (the metadata is about them).
CONTENT_FILES = ("model.txt", "tables.npz")


class RegistryError(ValueError):
    """A registry command that cannot be done: an unknown version, nothing to roll back."""


@dataclass(frozen=True)
class ServingState:
    """What the workers serve: the champion, and optionally a challenger for a share of users."""

    champion: str | None
    challenger: str | None = None
    share: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VersionInfo:
    """One artifact of the registry, as ``worker models list`` shows it."""

    version: str
    created_at: str
    parent: str | None
    content_sha256: str
    training_window: dict[str, Any]
    metrics: dict[str, Any]
    role: str  # "champion", "challenger" or ""


def content_hash(artifact_dir: Path) -> str:
    """SHA-256 over the artifact's model and tables (name and bytes of each, in order)."""
    digest = hashlib.sha256()
    for name in CONTENT_FILES:
        digest.update(name.encode() + b"\0")
        with open(artifact_dir / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"unreadable {path}: {exc}") from exc
    if not isinstance(value, dict):
        raise ModelLoadError(f"{path} does not hold a JSON object")
    return value


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def versions(models_dir: Path) -> list[str]:
    """Every artifact version in ``models_dir``, oldest first (versions start with their UTC
    creation time)."""
    if not models_dir.is_dir():
        return []
    return sorted(
        p.name
        for p in models_dir.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / "metadata.json").is_file()
    )


def serving_state(models_dir: Path) -> ServingState:
    """The champion (``LATEST``) and the challenger (``CHALLENGER``) of ``models_dir``."""
    latest = models_dir / LATEST_FILE
    champion = latest.read_text(encoding="utf-8").strip() if latest.is_file() else None
    challenger_file = models_dir / CHALLENGER_FILE
    if not challenger_file.is_file():
        return ServingState(champion or None)
    challenger = _read_json(challenger_file)
    return ServingState(
        champion or None, str(challenger["version"]), float(challenger.get("share", 0.0))
    )


def info(models_dir: Path, version: str) -> VersionInfo:
    """The registry's view of one version.

    Raises:
        RegistryError: no artifact of that version in ``models_dir``.
    """
    artifact_dir = models_dir / version
    if not (artifact_dir / "metadata.json").is_file():
        raise RegistryError(f"no artifact {version!r} in {models_dir}")
    metadata = _read_json(artifact_dir / "metadata.json")
    state = serving_state(models_dir)
    role = (
        "champion"
        if version == state.champion
        else "challenger"
        if version == state.challenger
        else ""
    )
    return VersionInfo(
        version=version,
        created_at=str(metadata.get("created_at", "")),
        parent=metadata.get("parent"),
        content_sha256=str(metadata.get("content_sha256") or content_hash(artifact_dir)),
        training_window=dict(metadata.get("training_window", {})),
        metrics=dict(metadata.get("metrics", {})),
        role=role,
    )


def history(models_dir: Path) -> list[dict[str, Any]]:
    """Every recorded change, oldest first."""
    path = models_dir / HISTORY_FILE
    if not path.is_file():
        return []
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                entries.append(json.loads(line))
            except ValueError as exc:
                raise ModelLoadError(f"{path} line {number} is not JSON: {exc}") from exc
    return entries


def _record(
    models_dir: Path,
    action: str,
    before: ServingState,
    after: ServingState,
    by: str | None,
    why: str,
    **extra: Any,
) -> dict[str, Any]:
    entry = {
        "at": datetime.now(timezone.utc).isoformat(),
        "action": action,
        "by": by or _user(),
        "why": why,
        "before": before.as_dict(),
        "after": after.as_dict(),
        **extra,
    }
    with open(models_dir / HISTORY_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, separators=(",", ":")) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return entry


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        return f"uid:{os.getuid()}"


def _apply(models_dir: Path, state: ServingState) -> None:
    """Write ``state``: the challenger file first (removed or replaced), then LATEST."""
    challenger_file = models_dir / CHALLENGER_FILE
    if state.challenger is None:
        challenger_file.unlink(missing_ok=True)
    else:
        _write_atomically(
            challenger_file,
            json.dumps({"version": state.challenger, "share": state.share}) + "\n",
        )
    if state.champion is not None:
        point_latest(models_dir, state.champion)


def _require(models_dir: Path, version: str) -> None:
    if not (models_dir / version / "metadata.json").is_file():
        known = ", ".join(versions(models_dir)[-5:]) or "none"
        raise RegistryError(f"no artifact {version!r} in {models_dir} (latest versions: {known})")


def publish(models_dir: Path, version: str, *, by: str | None = None, why: str = "") -> None:
    """Make a freshly trained ``version`` the champion (what ``worker train`` does by default);
    a challenger in place is kept."""
    _require(models_dir, version)
    before = serving_state(models_dir)
    after = ServingState(version, before.challenger, before.share)
    _apply(models_dir, after)
    _record(models_dir, "publish", before, after, by, why or "trained")


def set_challenger(
    models_dir: Path,
    version: str | None,
    share: float,
    *,
    by: str | None = None,
    why: str = "",
) -> ServingState:
    """Serve ``version`` to ``share`` of the users (0 < share < 1), or end the experiment
    (``version`` None)."""
    before = serving_state(models_dir)
    if version is None:
        after = ServingState(before.champion)
    else:
        _require(models_dir, version)
        if not 0.0 < share < 1.0:
            raise RegistryError(f"a challenger's share is between 0 and 1 exclusive, not {share}")
        if version == before.champion:
            raise RegistryError(f"{version} is already the champion")
        after = ServingState(before.champion, version, share)
    _apply(models_dir, after)
    _record(models_dir, "challenger", before, after, by, why)
    return after


def promote(
    models_dir: Path, version: str | None = None, *, by: str | None = None, why: str = ""
) -> ServingState:
    """Make ``version`` (by default the challenger) the champion for every user; the experiment
    ends."""
    before = serving_state(models_dir)
    target = version or before.challenger
    if target is None:
        raise RegistryError("no challenger to promote: name a version")
    _require(models_dir, target)
    after = ServingState(target)
    _apply(models_dir, after)
    _record(models_dir, "promote", before, after, by, why)
    return after


def rollback(models_dir: Path, *, by: str | None = None, why: str = "") -> ServingState:
    """Undo the latest promote or publish not yet rolled back: the serving state before it
    (champion, challenger and share) comes back exactly.

    Raises:
        RegistryError: nothing to roll back.
    """
    entries = history(models_dir)
    undone = {e.get("undoes") for e in entries if e.get("action") == "rollback"}
    for index in range(len(entries) - 1, -1, -1):
        entry = entries[index]
        if entry.get("action") in ("promote", "publish") and index not in undone:
            restored = ServingState(**entry["before"])
            if restored.champion is None:
                raise RegistryError("the latest change made the first champion: nothing before")
            before = serving_state(models_dir)
            _apply(models_dir, restored)
            _record(models_dir, "rollback", before, restored, by, why, undoes=index)
            return restored
    raise RegistryError(f"nothing to roll back in {models_dir / HISTORY_FILE}")
