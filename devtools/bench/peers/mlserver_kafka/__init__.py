"""MLServer's Kafka mode: settings, model settings and its message format, as pure functions.

``settings.json`` and ``model-settings.json`` next to this file are the templates; a run writes a
model repository into a temp dir (the model path and ports vary per run) with
:func:`write_model_repository`.

The message format, read from MLServer 1.7.1's source (``mlserver/kafka/server.py``,
``handlers.py``, ``message.py``):

* **Consumer**: ``AIOKafkaConsumer(kafka_topic_input, bootstrap_servers=kafka_servers)`` and
  nothing else: no consumer group, ``auto_offset_reset="latest"``, no commits. Requests produced
  before the consumer has its partitions are never read: drivers must wait until a probe request
  is answered before producing load.
* **Request**: value = V2 inference request JSON (``{"id", "inputs": [{"name", "shape",
  "datatype", "data"}]}``). Header ``mlserver-model`` (the model name) is required; the message
  is dropped with a logged 422 without it. ``mlserver-version`` is optional,
  ``mlserver-method`` defaults to ``infer`` (the only method). The Kafka key, when present,
  replaces the body's ``id``. All headers are copied into ``parameters.headers`` of the request.
* **Response**: on ``kafka_topic_output``, key = the response id (= the request id), value = V2
  inference response JSON (``model_name``, ``model_version``, ``id``, ``parameters``,
  ``outputs``), headers = ``parameters.headers`` of the response (none for the LightGBM runtime).
  Failed requests produce no response (the error is only logged).
* **Processing**: every request becomes its own asyncio task (no bound on in-flight requests)
  that ends with ``producer.send_and_wait`` of its one response; order is not kept.
* **LightGBM runtime**: ``NumpyRequestCodec`` decodes the single input to an array of its
  ``shape`` and calls ``Booster.predict`` once per request (or once per adaptive batch when
  ``max_batch_size`` > 1); the output is named ``predict``, FP64.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

TEMPLATE_DIR = Path(__file__).resolve().parent
MODEL_NAME_HEADER = "mlserver-model"
MODEL_VERSION_HEADER = "mlserver-version"
INPUT_NAME = "features"
OUTPUT_NAME = "predict"


def _template(name: str) -> dict[str, Any]:
    return json.loads((TEMPLATE_DIR / name).read_text(encoding="utf-8"))


def render_settings(
    *,
    kafka_servers: str,
    topic_input: str,
    topic_output: str,
    http_port: int,
    grpc_port: int,
    metrics_port: int | None = None,
    parallel_workers: int = 0,
    log_level: str = "WARNING",
) -> dict[str, Any]:
    """Server ``settings.json``.

    Args:
        metrics_port: ``None`` turns the Prometheus endpoint off (``metrics_endpoint: null``).
        parallel_workers: 0 runs inference in the server process (one process, like the other
            contestants); MLServer's default is 1 extra inference process.
        log_level: level of the ``mlserver`` loggers; MLServer's stock level is INFO, which logs
            one line per Kafka message.
    """
    settings = _template("settings.json")
    settings.update(
        {
            "kafka_servers": kafka_servers,
            "kafka_topic_input": topic_input,
            "kafka_topic_output": topic_output,
            "http_port": http_port,
            "grpc_port": grpc_port,
            "parallel_workers": parallel_workers,
        }
    )
    if metrics_port is None:
        settings["metrics_endpoint"] = None
    else:
        settings["metrics_endpoint"] = "/metrics"
        settings["metrics_port"] = metrics_port
    if log_level.upper() != "INFO":
        settings["logging_settings"] = {
            "version": 1,
            "disable_existing_loggers": False,
            "loggers": {
                "mlserver": {"level": log_level.upper()},
                "uvicorn.access": {"level": log_level.upper()},
            },
        }
    return settings


#: The custom runtime that scores with the compiled model (``lleaves_runtime.py`` beside this
#: file, copied into the model directory), and the object's name there.
LLEAVES_IMPLEMENTATION = "lleaves_runtime.LleavesModel"
LLEAVES_RUNTIME_FILE = TEMPLATE_DIR / "lleaves_runtime.py"
COMPILED_NAME = "model.o"


def render_model_settings(
    *,
    model_uri: str = "./model.txt",
    name: str = "recommender",
    version: str = "v1",
    max_batch_size: int = 0,
    max_batch_time_s: float = 0.0,
    compile_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``model-settings.json`` for the LightGBM runtime, or with ``compile_options`` (lleaves'
    options of the compiled object) for the lleaves runtime (:data:`LLEAVES_IMPLEMENTATION`).

    ``max_batch_size`` > 1 turns on MLServer's adaptive batching: requests arriving within
    ``max_batch_time_s`` are concatenated along the first axis into one ``predict`` call.
    """
    model = _template("model-settings.json")
    model["name"] = name
    model["parameters"] = {**model.get("parameters", {}), "uri": model_uri, "version": version}
    if compile_options is not None:
        model["implementation"] = LLEAVES_IMPLEMENTATION
        model["parameters"]["extra"] = {
            "compiled": COMPILED_NAME,
            "compile_options": dict(compile_options),
        }
    if max_batch_size > 1:
        model["max_batch_size"] = max_batch_size
        model["max_batch_time"] = max_batch_time_s
    return model


def write_model_repository(
    repo_dir: Path,
    model_txt: Path,
    settings: Mapping[str, Any],
    model_settings: Mapping[str, Any],
    compiled: Path | None = None,
) -> Path:
    """Lay out ``repo_dir/settings.json`` and ``repo_dir/<name>/{model-settings.json,model.txt}``
    (the model file is copied, so the run does not depend on the artifact dir staying put); for
    the lleaves runtime also its module and the ``compiled`` object.

    Returns the directory to pass to ``mlserver start``.

    Raises:
        ValueError: the lleaves runtime without a compiled object.
    """
    model_dir = repo_dir / str(model_settings["name"])
    model_dir.mkdir(parents=True, exist_ok=True)
    target = model_dir / Path(str(model_settings["parameters"]["uri"])).name
    target.write_bytes(model_txt.read_bytes())
    if model_settings.get("implementation") == LLEAVES_IMPLEMENTATION:
        if compiled is None:
            raise ValueError("the lleaves runtime needs the compiled object")
        (model_dir / COMPILED_NAME).write_bytes(compiled.read_bytes())
        (model_dir / LLEAVES_RUNTIME_FILE.name).write_bytes(LLEAVES_RUNTIME_FILE.read_bytes())
    (repo_dir / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2) + "\n")
    return repo_dir


def encode_request(features: np.ndarray, request_id: str) -> bytes:
    """V2 inference request JSON for one event's ``(candidates, features)`` float32 matrix.

    Data is the flat row-major list; each float32 is written as the shortest decimal that reads
    back as the same float64 (``tolist``), so MLServer's FP32 decode gets the exact values.
    """
    if features.ndim != 2:
        raise ValueError(f"expected a (candidates, features) matrix, got shape {features.shape}")
    body = {
        "id": request_id,
        "inputs": [
            {
                "name": INPUT_NAME,
                "shape": list(features.shape),
                "datatype": "FP32",
                "data": features.astype(np.float32, copy=False).ravel().tolist(),
            }
        ],
    }
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def request_headers(model_name: str, model_version: str | None = None) -> list[tuple[str, bytes]]:
    """Kafka headers of a request: ``mlserver-model`` (required), ``mlserver-version``."""
    headers = [(MODEL_NAME_HEADER, model_name.encode("utf-8"))]
    if model_version is not None:
        headers.append((MODEL_VERSION_HEADER, model_version.encode("utf-8")))
    return headers


def decode_request(value: bytes) -> np.ndarray:
    """The feature matrix of a request (the inverse of :func:`encode_request`)."""
    tensor = json.loads(value)["inputs"][0]
    return np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])


def decode_response(value: bytes) -> tuple[str, np.ndarray]:
    """``(id, scores)`` of a V2 inference response; scores float64, one per candidate.

    Raises:
        ValueError: no ``predict`` output.
    """
    body = json.loads(value)
    for output in body.get("outputs", []):
        if output.get("name") == OUTPUT_NAME:
            return str(body.get("id")), np.asarray(output["data"], dtype=np.float64).ravel()
    raise ValueError(f"response {body.get('id')!r} has no {OUTPUT_NAME!r} output")
