"""The model registry: serving state, history, promote and an exact rollback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.model import registry
from worker.model.artifact import resolve_artifact_dir
from worker.model.registry import RegistryError, ServingState


def _artifact(models_dir: Path, version: str, payload: bytes = b"m") -> None:
    d = models_dir / version
    d.mkdir(parents=True)
    (d / "model.txt").write_bytes(payload)
    (d / "tables.npz").write_bytes(b"t" + payload)
    (d / "metadata.json").write_text(json.dumps({"version": version, "format": 1}))


VERSIONS = ["20260101T000000Z-a", "20260102T000000Z-b", "20260103T000000Z-c"]


def _registry(tmp_path: Path) -> Path:
    for i, v in enumerate(VERSIONS):
        _artifact(tmp_path, v, payload=bytes([i]))
    registry.publish(tmp_path, VERSIONS[0], by="t", why="first")
    return tmp_path


def test_publish_challenger_promote_rollback(tmp_path: Path) -> None:
    root = _registry(tmp_path)
    assert registry.serving_state(root) == ServingState(VERSIONS[0])
    assert resolve_artifact_dir(root) == root / VERSIONS[0]  # workers read LATEST as before

    registry.set_challenger(root, VERSIONS[1], 0.25, by="ds", why="try b")
    assert registry.serving_state(root) == ServingState(VERSIONS[0], VERSIONS[1], 0.25)
    assert registry.info(root, VERSIONS[1]).role == "challenger"

    registry.promote(root, by="ds", why="b wins")
    assert registry.serving_state(root) == ServingState(VERSIONS[1])

    restored = registry.rollback(root, by="sre", why="b hurts")
    assert restored == ServingState(VERSIONS[0], VERSIONS[1], 0.25)  # exactly as before
    assert registry.serving_state(root) == restored
    entries = registry.history(root)
    assert [e["action"] for e in entries] == ["publish", "challenger", "promote", "rollback"]
    assert entries[-1]["by"] == "sre" and entries[-1]["why"] == "b hurts"
    assert entries[-1]["undoes"] == 2


def test_refusals(tmp_path: Path) -> None:
    root = _registry(tmp_path)
    with pytest.raises(RegistryError, match="no artifact"):
        registry.set_challenger(root, "nope", 0.5)
    with pytest.raises(RegistryError, match="between 0 and 1"):
        registry.set_challenger(root, VERSIONS[1], 1.0)
    with pytest.raises(RegistryError, match="already the champion"):
        registry.set_challenger(root, VERSIONS[0], 0.5)
    with pytest.raises(RegistryError, match="no challenger"):
        registry.promote(root)
    with pytest.raises(RegistryError, match="first champion"):
        registry.rollback(root)  # the only change made the first champion
    assert registry.serving_state(root) == ServingState(VERSIONS[0])


def test_content_hash_depends_on_model_and_tables_only(tmp_path: Path) -> None:
    _artifact(tmp_path, "a", b"same")
    _artifact(tmp_path, "b", b"same")
    _artifact(tmp_path, "c", b"other")
    (tmp_path / "b" / "metadata.json").write_text("{}")
    hashes = {v: registry.content_hash(tmp_path / v) for v in "abc"}
    assert hashes["a"] == hashes["b"] != hashes["c"]


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.sampled_from(VERSIONS)),
        st.tuples(st.just("challenger"), st.sampled_from(VERSIONS), st.sampled_from([0.1, 0.5])),
        st.tuples(st.just("end")),
        st.tuples(st.just("promote"), st.sampled_from([None, *VERSIONS])),
        st.tuples(st.just("rollback")),
    ),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(ops=_ops)
def test_rollbacks_walk_back_through_promotions(tmp_path_factory, ops) -> None:
    """A model of the registry: every rollback restores the state before the latest promote or
    publish not yet undone, and the files always agree with the model."""
    root = _registry(tmp_path_factory.mktemp("reg"))
    state = ServingState(VERSIONS[0])
    changes: list[ServingState] = []  # states before each promote/publish not yet undone
    for op in ops:
        try:
            if op[0] == "publish":
                before = state
                registry.publish(root, op[1])
                state = ServingState(op[1], state.challenger, state.share)
                changes.append(before)
            elif op[0] == "challenger":
                registry.set_challenger(root, op[1], op[2])
                state = ServingState(state.champion, op[1], op[2])
            elif op[0] == "end":
                registry.set_challenger(root, None, 0.0)
                state = ServingState(state.champion)
            elif op[0] == "promote":
                before = state
                registry.promote(root, op[1])
                state = ServingState(op[1] or state.challenger)
                changes.append(before)
            else:
                registry.rollback(root)
                state = changes.pop()
        except RegistryError:
            pass  # a refused command changes nothing
        assert registry.serving_state(root) == state
