"""Driver of the MLServer peer: MLServer's Kafka mode serving the worker's LightGBM model file.

Runs in the project's env. MLServer itself runs as ``mlserver start`` from its own venv
(:func:`devtools.bench.peers.envs.ensure_env`), one process (``parallel_workers: 0``).

What one run does (see :func:`run_mlserver_peer`):

1. Builds the workload: one ``(candidates, 20)`` float32 feature matrix per simulated event, from
   the worker's own session, candidate and feature code (or takes a pre-built array), and encodes
   every request (V2 JSON) before anything is timed.
2. Creates a fresh input topic and a fresh output topic (``LogAppendTime``), writes a model
   repository into ``work_dir`` and starts MLServer; waits for ``/v2/health/ready``.
3. Sends probe requests until one is answered: MLServer's consumer has no group and starts at the
   end of the topic, so anything produced before it holds its partitions is never read.
4. Produces the ``n_events`` requests, as fast as the producer goes (a backlog: throughput) or at
   ``rate`` per second (latency), and collects the responses by id.
5. Stops MLServer (SIGTERM) and returns figures plus the exact configuration.

From a shell: ``python -m devtools.bench.peers.run_mlserver --bootstrap ... --models-dir ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from devtools.bench.peers import mlserver_kafka
from devtools.bench.peers.envs import ensure_env
from devtools.bench.peers.workload import (
    LOG_APPEND_TIME,
    OutputCollector,
    ProcessMeter,
    build_feature_matrices,
    create_topics,
    delete_topics,
    free_port,
    latency_summary,
    make_load_producer,
    produce_paced,
    simulated_events,
    throughput,
    unique_name,
    wait_until,
)
from worker.model.scoring import COMPILE_OPTIONS

PEER_PACKAGES = (
    "mlserver",
    "mlserver-lightgbm",
    "aiokafka",
    "lightgbm",
    "lleaves",
    "llvmlite",
    "numpy",
    "pydantic",
)
CHECKED_RESPONSES = 20


class PeerFailedError(RuntimeError):
    """The peer process exited early or never answered."""


def peer_versions(python: Path, packages: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of packages in a venv (``importlib.metadata``, run by its python)."""
    code = (
        "import importlib.metadata as m, json, sys;"
        f"print(json.dumps({{p: m.version(p) for p in {list(packages)!r}}}))"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return {**json.loads(out.stdout), "python": sys.version.split()[0]}


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def stop_process_group(proc: subprocess.Popen, timeout_s: float = 20.0) -> int | None:
    """SIGTERM the process group of ``proc`` (started with a new session), SIGKILL after
    ``timeout_s``; returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


def compiled_object(artifact_dir: Path) -> Path | None:
    """The lleaves object of an artifact's model for this host, as the worker loads it (from the
    artifact's cache; compiled into it when missing); None when lleaves cannot score it here."""
    from worker.model.artifact import load_artifact
    from worker.model.scoring import LleavesScorer, make_scorer

    artifact = load_artifact(artifact_dir)
    scorer = make_scorer(artifact.path, artifact.booster, backend="lleaves")
    if not isinstance(scorer, LleavesScorer):
        return None
    return scorer.cache_file


def run_mlserver_peer(
    bootstrap: str,
    model_txt: Path,
    n_events: int,
    candidates: int,
    work_dir: Path,
    *,
    rate: float | None = None,
    features: np.ndarray | None = None,
    python: Path | None = None,
    env_root: Path | None = None,
    partitions: int = 1,
    parallel_workers: int = 0,
    max_batch_size: int = 0,
    max_batch_time_s: float = 0.0,
    log_level: str = "WARNING",
    omp_threads: int | None = 1,
    compiled: Path | None = None,
    ready_timeout_s: float = 120.0,
    stall_timeout_s: float = 60.0,
    keep_topics: bool = False,
) -> dict[str, Any]:
    """Measure MLServer's Kafka mode on ``n_events`` requests of ``candidates`` x 25 features.

    Args:
        bootstrap: the broker (the same one the worker is measured on).
        model_txt: the LightGBM model file (``models/<version>/model.txt``); the artifact dir
            next to it provides the catalogue tables when ``features`` is not given.
        features: pre-built float32 ``(n_events, candidates, 25)``; default: built from the
            simulator's live stream with the worker's code.
        rate: produce at this many requests per second and report latency; ``None``: produce
            as fast as possible and report the sustained throughput of the backlog.
        python: the peer venv's python; default :func:`ensure_env` ``("mlserver", env_root)``
            with ``env_root`` defaulting to ``work_dir/envs``.
        partitions: of the input and output topics.
        parallel_workers, max_batch_size, max_batch_time_s, log_level: MLServer settings (see
            :mod:`devtools.bench.peers.mlserver_kafka`); defaults: one process, no adaptive
            batching, WARNING logs.
        omp_threads: ``OMP_NUM_THREADS`` of the MLServer process. The LightGBM runtime calls
            ``predict`` without ``num_threads``, so LightGBM uses every core through OpenMP;
            1 matches the worker and the Quix app (``num_threads=1``). ``None`` leaves it unset.
        stall_timeout_s: give up when no response arrives for this long.
        compiled: the lleaves object of ``model_txt`` for this host (``worker.model.scoring``'s
            cache): serve through the lleaves runtime
            (:mod:`devtools.bench.peers.mlserver_kafka.lleaves_runtime`) instead of LightGBM's.

    Returns:
        ``{"peer", "figures": {...}, "config": {...}}``; figures hold throughput, latency (with
        ``rate``), CPU seconds and peak RSS of the MLServer process tree, and correctness checks.

    Raises:
        PeerFailedError: MLServer exited, never became ready, or never answered a probe.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    run_id = unique_name("mlserver")
    if python is None:
        python = ensure_env("mlserver", env_root or work_dir / "envs")
    mlserver_bin = python.parent / "mlserver"

    # 1. Workload, encoded up front.
    if features is None:
        artifact_dir = model_txt.parent
        features = build_feature_matrices(artifact_dir, simulated_events(n_events), candidates)
    if features.shape != (n_events, candidates, features.shape[2]):
        raise ValueError(
            f"features of shape {features.shape}, expected ({n_events}, {candidates}, F)"
        )
    model_name, model_version = "recommender", "v1"
    headers = mlserver_kafka.request_headers(model_name, model_version)
    values = [mlserver_kafka.encode_request(features[i], f"r{i}") for i in range(n_events)]

    # 2. Topics, model repository, server.
    topic_in, topic_out = f"{run_id}-requests", f"{run_id}-responses"
    create_topics(bootstrap, {topic_in: (partitions, {}), topic_out: (partitions, LOG_APPEND_TIME)})
    http_port, grpc_port = free_port(), free_port()
    settings = mlserver_kafka.render_settings(
        kafka_servers=bootstrap,
        topic_input=topic_in,
        topic_output=topic_out,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=None,
        parallel_workers=parallel_workers,
        log_level=log_level,
    )
    model_settings = mlserver_kafka.render_model_settings(
        name=model_name,
        version=model_version,
        max_batch_size=max_batch_size,
        max_batch_time_s=max_batch_time_s,
        compile_options=None if compiled is None else COMPILE_OPTIONS,
    )
    repo = mlserver_kafka.write_model_repository(
        work_dir / f"{run_id}-repo", model_txt, settings, model_settings, compiled
    )
    log_path = work_dir / f"{run_id}.log"
    server_env = dict(os.environ)
    if omp_threads is not None:
        server_env["OMP_NUM_THREADS"] = str(omp_threads)

    responses: dict[str, int] = {}
    checked: dict[str, bytes] = {}
    lock = threading.Lock()

    def on_response(key: bytes | None, value: bytes | None, ts_ms: int) -> None:
        rid = (key or b"").decode("utf-8", "replace")
        with lock:
            responses[rid] = ts_ms
            if value is not None and rid.startswith("r") and len(checked) < CHECKED_RESPONSES:
                checked[rid] = value

    proc: subprocess.Popen | None = None
    meter: ProcessMeter | None = None
    collector: OutputCollector | None = None
    started_s = time.monotonic()
    try:
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                [str(mlserver_bin), "start", str(repo)],
                cwd=repo,  # MLServer writes .envs/ and .metrics/ into its cwd
                env=server_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        meter = ProcessMeter(proc.pid).start()

        def check_alive() -> None:
            if proc is not None and proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise PeerFailedError(f"mlserver exited with {proc.returncode}:\n{tail}")

        ready_url = f"http://127.0.0.1:{http_port}/v2/health/ready"
        wait_until(lambda: _http_ok(ready_url), ready_timeout_s, "MLServer ready", 0.2, check_alive)
        startup_s = time.monotonic() - started_s
        collector = OutputCollector(bootstrap, topic_out, on_response).start()

        # 3. Probe until MLServer's consumer holds the partition(s).
        producer = make_load_producer(bootstrap)
        probe = mlserver_kafka.encode_request(features[0], "probe-0")
        probes = 0
        deadline = time.monotonic() + ready_timeout_s
        while not any(k.startswith("probe-") for k in list(responses)):
            check_alive()
            if time.monotonic() > deadline:
                raise PeerFailedError(f"no answer to {probes} probe requests on {topic_in}")
            for p in range(partitions):
                producer.produce(
                    topic_in,
                    value=probe,
                    key=f"probe-{probes}".encode(),
                    headers=headers,
                    partition=p,
                )
                probes += 1
            producer.flush(10)
            time.sleep(0.5)
        time.sleep(1.0)  # let late probes drain so they do not overlap the measurement

        # 4. Load.
        send_ms = [0] * n_events

        def on_send(index: int, sent_ms: int) -> None:
            send_ms[index] = sent_ms

        cpu_before = meter.cpu_s()
        load_started = time.monotonic()
        produce_s = produce_paced(
            producer,
            ((topic_in, f"r{i}".encode(), values[i], headers) for i in range(n_events)),
            rate=rate,
            on_send=on_send,
        )

        def answered() -> int:
            with lock:
                return sum(1 for k in responses if k.startswith("r"))

        last_count, last_change = -1, time.monotonic()
        while True:
            count = answered()
            if count >= n_events:
                break
            check_alive()
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            elif time.monotonic() - last_change > stall_timeout_s:
                break
            time.sleep(0.05)
        load_s = time.monotonic() - load_started
        meter.sample()
        cpu_during = meter.cpu_s() - cpu_before
    finally:
        exit_code = stop_process_group(proc) if proc is not None else None
        if meter is not None:
            meter.stop()
        if collector is not None:
            collector.stop()
        if not keep_topics:
            delete_topics(bootstrap, [topic_in, topic_out])

    with lock:
        answered_ts = {k: v for k, v in responses.items() if k.startswith("r")}
    latencies = [
        answered_ts[f"r{i}"] - send_ms[i] for i in range(n_events) if f"r{i}" in answered_ts
    ]
    figures: dict[str, Any] = {
        "events": n_events,
        "answered": len(answered_ts),
        "throughput": throughput(list(answered_ts.values())),
        "produce_s": round(produce_s, 3),
        "load_s": round(load_s, 3),
        "startup_s": round(startup_s, 1),
        "cpu_s": round(cpu_during, 2),
        "cpu_ms_per_event": round(1000 * cpu_during / max(len(answered_ts), 1), 3),
        "cpu_s_total": round(meter.cpu_s(), 2),
        "peak_rss_mb": round(meter.peak_rss_bytes / 2**20, 1),
        "peak_hwm_mb": round(meter.peak_hwm_bytes / 2**20, 1),
        "processes": meter.processes,
        "exit_code": exit_code,
        "scores_max_abs_diff": _check_scores(model_txt, features, checked),
    }
    if rate:
        figures["offered_rate_per_s"] = rate
        figures["latency"] = latency_summary(latencies)
    else:
        figures["backlog_latency"] = latency_summary(latencies)
    return {
        "peer": "mlserver-kafka",
        "figures": figures,
        "config": {
            "versions": peer_versions(python, PEER_PACKAGES),
            "settings": settings,
            "model_settings": model_settings,
            "model_file": str(model_txt),
            "candidates": candidates,
            "features_per_row": int(features.shape[2]),
            "request_bytes_mean": round(sum(map(len, values)) / n_events),
            "request_headers": {k: v.decode() for k, v in headers},
            "topics": {"input": topic_in, "output": topic_out, "partitions": partitions},
            "mode": f"rate {rate}/s" if rate else "backlog (as fast as possible)",
            "omp_num_threads": omp_threads,
            "probes_sent": probes,
            "log": str(log_path),
        },
    }


def _check_scores(model_txt: Path, features: np.ndarray, checked: dict[str, bytes]) -> float | None:
    """Largest |MLServer score - local Booster.predict| over a sample of responses."""
    if not checked:
        return None
    import lightgbm

    booster = lightgbm.Booster(model_file=str(model_txt))
    worst = 0.0
    for rid, value in checked.items():
        _, scores = mlserver_kafka.decode_response(value)
        local = booster.predict(features[int(rid[1:])], num_threads=1)
        worst = max(worst, float(np.max(np.abs(scores - local))))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument(
        "--models-dir",
        type=Path,
        required=True,
        help="models dir (LATEST) or an artifact dir with model.txt",
    )
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--rate", type=float, default=None)
    parser.add_argument("--work-dir", type=Path, default=Path("var/bench-peers"))
    parser.add_argument("--env-root", type=Path, default=None)
    parser.add_argument("--max-batch-size", type=int, default=0)
    parser.add_argument("--max-batch-time-s", type=float, default=0.0)
    parser.add_argument("--parallel-workers", type=int, default=0)
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--omp-threads", type=int, default=1, help="0: leave OMP_NUM_THREADS unset")
    parser.add_argument(
        "--scorer",
        choices=("booster", "lleaves"),
        default="booster",
        help="LightGBM's runtime, or the lleaves runtime with the worker's compiled model",
    )
    args = parser.parse_args(argv)
    from worker.model.artifact import resolve_artifact_dir

    artifact_dir = resolve_artifact_dir(args.models_dir)
    model_txt = artifact_dir / "model.txt"
    compiled = None
    if args.scorer == "lleaves":
        compiled = compiled_object(artifact_dir)
        if compiled is None:
            raise SystemExit("--scorer lleaves: lleaves cannot score this model here")
    result = run_mlserver_peer(
        args.bootstrap,
        model_txt,
        args.events,
        args.candidates,
        args.work_dir,
        rate=args.rate,
        env_root=args.env_root,
        max_batch_size=args.max_batch_size,
        max_batch_time_s=args.max_batch_time_s,
        parallel_workers=args.parallel_workers,
        log_level=args.log_level,
        omp_threads=args.omp_threads or None,
        compiled=compiled,
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
