"""The benchmark peers' pure parts: settings generation, the V2 message format, pinned envs.

No broker, no venv, no network.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from devtools.bench.peers import mlserver_kafka
from devtools.bench.peers.envs import (
    PEER_NAMES,
    PeerEnvError,
    requirements_file,
    requirements_stamp,
)
from devtools.bench.peers.workload import latency_summary, throughput
from worker.core.features import N_FEATURES

PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?==[A-Za-z0-9.+!-]+$")


def test_server_settings_enable_kafka_on_the_given_topics_and_ports():
    settings = mlserver_kafka.render_settings(
        kafka_servers="127.0.0.1:19092",
        topic_input="in",
        topic_output="out",
        http_port=18080,
        grpc_port=18081,
    )
    assert settings["kafka_enabled"] is True
    assert settings["kafka_servers"] == "127.0.0.1:19092"
    assert (settings["kafka_topic_input"], settings["kafka_topic_output"]) == ("in", "out")
    assert (settings["http_port"], settings["grpc_port"]) == (18080, 18081)
    assert settings["metrics_endpoint"] is None  # metrics off by default
    assert settings["parallel_workers"] == 0  # one process
    assert settings["logging_settings"]["loggers"]["mlserver"]["level"] == "WARNING"
    json.dumps(settings)  # serialisable as settings.json


def test_server_settings_metrics_on_a_port_and_stock_logging():
    settings = mlserver_kafka.render_settings(
        kafka_servers="b:9092",
        topic_input="i",
        topic_output="o",
        http_port=1,
        grpc_port=2,
        metrics_port=3,
        log_level="INFO",
    )
    assert (settings["metrics_endpoint"], settings["metrics_port"]) == ("/metrics", 3)
    assert "logging_settings" not in settings


def test_model_settings_use_the_lightgbm_runtime_and_optional_adaptive_batching():
    plain = mlserver_kafka.render_model_settings()
    assert plain["implementation"] == "mlserver_lightgbm.LightGBMModel"
    assert plain["parameters"]["uri"] == "./model.txt"
    assert "max_batch_size" not in plain
    batched = mlserver_kafka.render_model_settings(max_batch_size=32, max_batch_time_s=0.002)
    assert (batched["max_batch_size"], batched["max_batch_time"]) == (32, 0.002)


def test_model_repository_layout(tmp_path: Path):
    model_txt = tmp_path / "artifact" / "model.txt"
    model_txt.parent.mkdir()
    model_txt.write_text("tree\n")
    model_settings = mlserver_kafka.render_model_settings(name="recommender")
    settings = mlserver_kafka.render_settings(
        kafka_servers="b:9092", topic_input="i", topic_output="o", http_port=1, grpc_port=2
    )
    repo = mlserver_kafka.write_model_repository(
        tmp_path / "repo", model_txt, settings, model_settings
    )
    assert json.loads((repo / "settings.json").read_text())["kafka_topic_input"] == "i"
    model_dir = repo / "recommender"
    assert json.loads((model_dir / "model-settings.json").read_text())["name"] == "recommender"
    assert (model_dir / "model.txt").read_text() == "tree\n"


def test_the_lleaves_runtime_gets_its_module_the_object_and_the_compile_options(tmp_path: Path):
    model_txt = tmp_path / "model.txt"
    model_txt.write_text("tree\n")
    compiled = tmp_path / "abc-123.o"
    compiled.write_bytes(b"\x7fELF object")
    options = {"raw_score": False, "fblocksize": 34}
    model_settings = mlserver_kafka.render_model_settings(
        max_batch_size=32, max_batch_time_s=0.005, compile_options=options
    )
    assert model_settings["implementation"] == "lleaves_runtime.LleavesModel"
    assert model_settings["parameters"]["extra"] == {
        "compiled": "model.o",
        "compile_options": options,
    }
    assert model_settings["max_batch_size"] == 32
    settings = mlserver_kafka.render_settings(
        kafka_servers="b:9092", topic_input="i", topic_output="o", http_port=1, grpc_port=2
    )
    repo = mlserver_kafka.write_model_repository(
        tmp_path / "repo", model_txt, settings, model_settings, compiled
    )
    model_dir = repo / "recommender"
    assert (model_dir / "model.o").read_bytes() == b"\x7fELF object"
    runtime = (model_dir / "lleaves_runtime.py").read_text()
    assert "class LleavesModel(MLModel)" in runtime and "import worker" not in runtime
    with pytest.raises(ValueError, match="compiled object"):
        mlserver_kafka.write_model_repository(
            tmp_path / "repo2", model_txt, settings, model_settings
        )


def test_v2_request_round_trips_float32_features_exactly():
    rng = np.random.default_rng(7)
    features = rng.normal(size=(50, N_FEATURES)).astype(np.float32)
    features[0, 0] = 1e5  # NEVER_SEEN_S-like values and negatives survive too
    features[0, 1] = -1.0
    value = mlserver_kafka.encode_request(features, "r17")
    body = json.loads(value)
    assert body["id"] == "r17"
    tensor = body["inputs"][0]
    assert (tensor["shape"], tensor["datatype"]) == ([50, N_FEATURES], "FP32")
    assert len(tensor["data"]) == 50 * N_FEATURES  # flat, row-major
    np.testing.assert_array_equal(mlserver_kafka.decode_request(value), features)


def test_request_headers_name_the_model():
    assert mlserver_kafka.request_headers("recommender") == [("mlserver-model", b"recommender")]
    assert ("mlserver-version", b"v1") in mlserver_kafka.request_headers("recommender", "v1")


def test_v2_request_rejects_a_batch_of_matrices():
    with pytest.raises(ValueError, match="matrix"):
        mlserver_kafka.encode_request(np.zeros((2, 50, N_FEATURES), np.float32), "r0")


def test_v2_response_decodes_the_predict_output():
    response = {
        "model_name": "recommender",
        "model_version": "v1",
        "id": "r3",
        "parameters": {},
        "outputs": [
            {"name": "predict", "shape": [3, 1], "datatype": "FP64", "data": [0.5, -1.25, 2.0]}
        ],
    }
    rid, scores = mlserver_kafka.decode_response(json.dumps(response).encode())
    assert rid == "r3"
    np.testing.assert_array_equal(scores, [0.5, -1.25, 2.0])
    with pytest.raises(ValueError, match="predict"):
        mlserver_kafka.decode_response(json.dumps({**response, "outputs": []}).encode())


@pytest.mark.parametrize("name", PEER_NAMES)
def test_requirements_are_exact_pins(name: str):
    lines = [
        line.strip()
        for line in requirements_file(name).read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines
    assert all(PIN.match(line) for line in lines), [x for x in lines if not PIN.match(x)]
    pinned = {line.split("==")[0].lower() for line in lines}
    wanted = {
        "mlserver": {
            "mlserver",
            "mlserver-lightgbm",
            "aiokafka",
            "lightgbm",
            "lleaves",
            "llvmlite",
        },
        # lleaves and llvmlite: --scorer lleaves, the worker's compiled model
        "quix": {
            "quixstreams",
            "lightgbm",
            "numpy",
            "fastavro",
            "structlog",
            "lleaves",
            "llvmlite",
        },
    }[name]
    assert wanted <= pinned


def test_unknown_peer_has_no_requirements():
    with pytest.raises(PeerEnvError):
        requirements_file("nope")


def test_stamp_changes_with_the_requirements(tmp_path: Path):
    req = tmp_path / "requirements.txt"
    req.write_text("a==1\n")
    first = requirements_stamp(req)
    assert requirements_stamp(req) == first
    req.write_text("a==2\n")
    assert requirements_stamp(req) != first


def test_throughput_and_latency_figures():
    assert throughput([1000, 1500, 2000]) == {"responses": 3, "span_s": 1.0, "per_s": 2.0}
    summary = latency_summary([float(v) for v in range(1, 101)])
    assert summary["count"] == 100
    assert summary["p50_ms"] == pytest.approx(50.5)
    assert latency_summary([]) == {"count": 0}


@pytest.mark.parametrize("name", PEER_NAMES)
def test_peers_score_with_the_workers_lleaves_and_llvmlite(name: str):
    """The peer venvs' lleaves and llvmlite are the project's pins, so the Quix app and the
    MLServer lleaves runtime load the artifact's compiled object (the cache is keyed by their
    versions) instead of compiling."""
    pins = {
        line.split("==")[0].lower(): line.split("==")[1]
        for line in requirements_file(name).read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    dev = (Path(__file__).resolve().parents[2] / "requirements" / "dev.txt").read_text()
    for package in ("lleaves", "llvmlite", "lightgbm"):
        assert f"{package}=={pins[package]} " in dev, package
