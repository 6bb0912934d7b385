"""The worker's input drift wiring: an artifact with a ``drift_reference`` gets
``worker_input_drift_psi{quantity}`` and an ``input_drift`` log line when a quantity crosses the
threshold; one without exports no drift metric."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from tests.unit.apps.test_serve_loop import Harness, run
from worker.apps.serve import Worker, drift_tracker
from worker.core.drift import PSI_SIGNIFICANT, build_reference
from worker.core.features import N_FEATURES
from worker.core.records import VIEW
from worker.testing import tiny_artifact


def _views_only_reference() -> dict:
    """A training window of views only: the harness's traffic (a third add-to-carts) has
    drifted from it."""
    n = 2000
    rng = np.random.default_rng(0)
    return build_reference(
        np.full(n, VIEW),
        np.zeros(n, dtype=bool),
        np.zeros(n, dtype=bool),
        rng.integers(1, 5, n),
        rng.random((n, N_FEATURES)).astype(np.float32),
    ).to_json()


def _worker(h: Harness, metadata: dict) -> Worker:
    artifact = tiny_artifact(Path("/nonexistent"))
    artifact = dataclasses.replace(artifact, metadata={**artifact.metadata, **metadata})
    w = Worker(
        h.settings,
        artifact,
        h.log,
        consumer_factory=h.consumer,
        producer_factory=h.producer,
        clock=h.clock,
    )
    h.main = h.consumers[0]
    h.main.schedule("assign", [("events", 0), ("events", 1), ("events", 2)])
    return w


def _psi_samples(w: Worker) -> dict[str, float]:
    return {
        s.labels["quantity"]: s.value
        for metric in w.metrics.registry.collect()
        if metric.name == "worker_input_drift_psi"
        for s in metric.samples
    }


def test_a_drifted_input_is_exported_and_logged() -> None:
    h = Harness(max_batch_size=50)
    h.write_events(300)
    w = _worker(h, {"drift_reference": _views_only_reference()})
    assert w.drift is not None and w.recommender.drift is w.drift
    w.drift.min_events = 200
    assert run(w) == 0
    now = time.monotonic()  # the loop's clock
    w._update_drift(now, force=True)
    psi = _psi_samples(w)
    assert psi["event_type"] > PSI_SIGNIFICANT
    assert {"session_length", "cand_log_pop", "unknown_product"} <= set(psi)
    logged = {f["quantity"]: f for f in h.log.fields("input_drift")}
    assert logged["event_type"]["above"] is True
    assert logged["event_type"]["threshold"] == PSI_SIGNIFICANT
    # once the window has rolled past every observation, nothing is exported any more
    w._update_drift(now + 3600, force=True)
    assert _psi_samples(w) == {}


def test_an_artifact_without_a_reference_exports_no_drift_metric() -> None:
    h = Harness()
    h.write_events(50)
    w = _worker(h, {})
    assert w.drift is None and w.recommender.drift is None
    run(w)
    w._update_drift(time.monotonic(), force=True)
    assert _psi_samples(w) == {}
    assert "input_drift" not in h.log.events()


def test_an_unreadable_reference_is_logged_and_ignored() -> None:
    h = Harness()
    w = _worker(h, {"drift_reference": {"format": 99}})
    assert w.drift is None
    assert h.log.events().count("drift_reference_unreadable") == 1
    assert drift_tracker(tiny_artifact(Path("/x")), h.log) is None
