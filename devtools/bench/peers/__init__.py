"""The peers that ``worker-dev bench`` measures side by side with the worker.

* :mod:`devtools.bench.peers.run_mlserver`: MLServer's Kafka mode with the LightGBM runtime.
* :mod:`devtools.bench.peers.run_quix`: a Quix Streams app running the worker's own pipeline.

Each peer runs in its own venv (:mod:`devtools.bench.peers.envs`); the drivers run in the
project's env. See ``devtools/bench/peers/README.md``.
"""
