"""Smoke test of ``worker-dev bench``: the small variant end to end on the test broker.

Every figure the benchmark prints must be there and positive; nothing is asserted about speed
(the CI machine is shared and small). The peers' code path runs too (MLServer and Quix in their
own venvs, a few hundred requests each) unless ``WORKER_BENCH_SMOKE_SKIP_PEERS=1``: building the
two venvs takes about a minute with a warm pip cache (``WORKER_BENCH_ENV_ROOT`` reuses a
directory of venvs across runs).
"""

from __future__ import annotations

import argparse
import json
import os

import pytest

pytestmark = pytest.mark.kafka

SKIP_PEERS = os.environ.get("WORKER_BENCH_SMOKE_SKIP_PEERS", "").lower() in ("1", "true", "yes")


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and value > 0


def test_bench_small_variant(
    kafka_bootstrap, tmp_path, simulator_settings, trained_models_dir, bench_env_root
):
    from devtools.bench import runner as bench
    from worker.ops.logging import configure_logging

    json_out = tmp_path / "bench.json"
    env_root = bench_env_root
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    argv = [
        "--small",
        "--bootstrap-servers",
        kafka_bootstrap,
        "--work-dir",
        str(tmp_path / "work"),
        "--models-dir",
        str(trained_models_dir),
        # The events must come from the catalogue the test model was trained on.
        "--users",
        str(simulator_settings.n_users),
        "--products",
        str(simulator_settings.n_products),
        "--categories",
        str(simulator_settings.n_categories),
        "--seed",
        str(simulator_settings.seed),
        "--events",
        "6000",
        "--rss-users",
        "20000",
        "--latency-s",
        "4",
        "--warmup-s",
        "2",
        "--latency-broker-warmups",
        "0",  # the session's broker has served every earlier test
        "--env-root",
        str(env_root),
        # Each peer once with its own scorer and once with the worker's compiled model, as many
        # peer runs as before the lleaves modes (the smoke test's time).
        "--mlserver-modes",
        "plain,adaptive-batching:lleaves",
        "--quix-modes",
        "per-message,batch-sink:lleaves",
        "--json-out",
        str(json_out),
    ]
    if SKIP_PEERS:
        argv.append("--skip-peers")
    args = parser.parse_args(argv)

    code = bench.run(args, configure_logging())

    results = json.loads(json_out.read_text())
    assert results["failures"] == [], results["failures"]
    assert code == 0
    assert results["worker_env"] == "runtime"  # the worker as the image installs it
    f = results["figures"]
    for key in (
        "throughput_1p_per_s",
        "throughput_2p_per_s",
        "scaling_factor",
        "cpu_s_per_million_1p",
        "cpu_s_per_million_2p",
        "latency_offered_per_s",
        "latency_p50_ms",
        "latency_p95_ms",
        "latency_p99_ms",
        "peak_rss_per_process_mib",
        "state_probe_peak_rss_mib",
        "rss_1m_users_mib",
        "ceiling_lightgbm_per_s",
        "ratio_e2e_to_ceiling",
    ):
        assert _positive(f.get(key)), (key, f.get(key))
    assert f["state_users"] == 20000
    assert f["users_after_expiry"] < f["state_users"]  # idle sessions expire
    latency = results["latency"]
    modes = ["unpinned"] if latency.get("pinned") == "not possible" else ["pinned", "unpinned"]
    # The worker's maximum by the peers' rule, in each mode, is the latency phase's 100 %.
    for mode in modes:
        sweep = results["sweep"][mode]
        assert sweep["best"]["kept_up"] and _positive(f.get(f"max_{mode}_per_s")), sweep
        assert sweep["best"]["scoring_backend"] in ("lleaves", "lightgbm")
        half = next(p for p in latency["points"] if p["mode"] == mode and p["fraction"] == 0.5)
        assert half["offered_per_s"] == pytest.approx(sweep["max_offered_per_s"] / 2, abs=0.1)
    for mode in modes:
        points = [p for p in latency["points"] if p["mode"] == mode]
        assert [p["fraction"] for p in points[:3]] == [0.25, 0.5, 0.75], mode
        for p in points:
            assert p["answered"] > 0, p
            assert sum(p["histogram_acknowledged"]["counts"]) == p["measured_answered"]
            assert p["generator_lag"]["count"] == p["measured_events"]
        half = points[1]
        assert half["answered"] == half["events"], half
        assert _positive(f.get(f"latency_{mode}_p99_ms")), mode
    if "pinned" in modes:
        pinned = next(p for p in latency["points"] if p["mode"] == "pinned")
        assert pinned["affinity"]["worker"] != pinned["affinity"]["generator"]
    if not SKIP_PEERS:  # the worker is measured at the peers' latency rates too
        assert any(p["fraction"] is None for p in latency["points"])

    one = results["throughput_1p"]
    assert set(one["stages_us_per_event"]) == {
        "fetch",
        "parse",
        "state",
        "candidates",
        "features",
        "scoring",
        "rank",
        "encode",
        "changelog",
        "produce",
        "checkpoint",
    }
    for stage in (
        "parse",
        "state",
        "features",
        "scoring",
        "rank",
        "encode",
        "produce",
        "checkpoint",
    ):
        assert _positive(one["stages_us_per_event"][stage]), stage
    assert all(_positive(r) for r in one["peak_rss_mib"])
    assert len(results["throughput_2p"]["peak_rss_mib"]) == 2
    if len(os.sched_getaffinity(0)) >= 2:  # wall-clock scaling with a core per worker
        assert (
            results["throughput_2p_pinned"]["pinned_to_cpus"] == sorted(os.sched_getaffinity(0))[:2]
        )
        assert _positive(f.get("scaling_factor_pinned"))

    statuses = {t["figure"]: t["status"] for t in results["targets"]}
    if "pinned" not in modes:  # a 1-CPU machine: the pinned latency target cannot be measured
        statuses.pop("latency_pinned_p99_ms")
    assert all(s in ("met", "NOT met") for k, s in statuses.items() if "vs_" not in k), statuses

    if not SKIP_PEERS:
        for key in (
            "mlserver_best_per_s",
            "ratio_throughput_vs_mlserver",
            "quix_best_per_s",
            "ratio_throughput_vs_quix",
            "ratio_p99_vs_quix",
            "mlserver_same_scorer_per_s",
            "ratio_throughput_vs_mlserver_same_scorer",
            "quix_same_scorer_per_s",
            "ratio_throughput_vs_quix_same_scorer",
        ):
            assert _positive(f.get(key)), (key, f.get(key))
        assert all(s != "not measured" for s in statuses.values())
        for key in (
            "mlserver_max_per_s",
            "mlserver_max_same_scorer_per_s",
            "quix_max_per_s",
            "quix_max_same_scorer_per_s",
            "ratio_max_vs_mlserver",
            "ratio_max_vs_mlserver_same_scorer",
            "ratio_max_vs_quix",
            "ratio_max_vs_quix_same_scorer",
        ):
            assert _positive(f.get(key)), (key, f.get(key))
        assert results["peers"]["mlserver"]["plain"]["sweep"]["steps"][0]["answered"] > 0
        compiled = results["peers"]["mlserver"]["adaptive-batching:lleaves"]
        assert compiled["scorer"] == "lleaves" and compiled["sweep"]["steps"][0]["answered"] > 0
        for mode in ("per-message", "batch-sink:lleaves"):  # both swept, latency at half max
            quix = results["peers"]["quix"][mode]
            assert quix["sweep"]["best"]["kept_up"], quix["sweep"]
            assert _positive(quix["latency_at_half"]["p99_ms"]), mode
        config = results["peers"]["mlserver"]["config"]["adaptive-batching:lleaves"]
        assert config["model_settings"]["implementation"] == "lleaves_runtime.LleavesModel"
        assert results["peers"]["quix"]["batch-sink:lleaves"]["config"]["scorer"] == "lleaves"
