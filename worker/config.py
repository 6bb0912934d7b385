"""Settings: CLI flag > environment variable > default, frozen once built.

Every librdkafka property can be passed through, as ``-X key=value`` on the command line or as
``WORKER_KAFKA_<KEY>`` in the environment (``WORKER_KAFKA_SASL_USERNAME`` -> ``sasl.username``).
A value ``@/path/to/file`` is read from that file (for secrets mounted as files). Secret values
are masked whenever settings are shown.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.core.errors import ConfigError

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
SECRET_MARKERS = (
    "password",
    "secret",
    "key.pem",
    "token",
    "sasl.jaas.config",
    "sasl.oauthbearer.config",
)
_ENV_KAFKA_PREFIX = "WORKER_KAFKA_"


def env(name: str, default: str) -> str:
    """An environment variable, or the default when unset or empty."""
    value = os.environ.get(name)
    return value if value else default


def is_secret(key: str) -> bool:
    return any(marker in key.lower() for marker in SECRET_MARKERS)


def mask(properties: Mapping[str, Any]) -> dict[str, Any]:
    """Copy of a property map with secret values replaced by ``***``."""
    return {k: ("***" if is_secret(k) else v) for k, v in properties.items()}


def _read_value(key: str, value: str) -> str:
    if not value.startswith("@"):
        return value
    path = Path(value[1:])
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        # For a secret, the "path" may be a password that merely starts with "@": never show it.
        where = "the file its @ value names" if is_secret(key) else str(path)
        raise ConfigError(f"cannot read the value of {key} from {where}: {exc.strerror}") from None


def kafka_properties(
    cli_pairs: list[str] | None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """librdkafka pass-through properties from the environment, then ``-X key=value`` pairs.

    Raises:
        ConfigError: a pair without ``=``, or an unreadable ``@file``.
    """
    environ = os.environ if environ is None else environ
    props: dict[str, str] = {}
    for name, value in environ.items():
        if name.startswith(_ENV_KAFKA_PREFIX) and value:
            key = name[len(_ENV_KAFKA_PREFIX) :].lower().replace("_", ".")
            props[key] = _read_value(key, value)
    for pair in cli_pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            # Never echo the pair: a malformed "sasl.password:secret" would leak the secret.
            raise ConfigError("-X expects key=value; got a value without '=' (not shown)")
        props[key.strip()] = _read_value(key, value)
    return props


@dataclass(frozen=True)
class KafkaSettings:
    """How to reach the cluster."""

    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    properties: Mapping[str, str] = field(default_factory=dict)

    def client_config(self, **overrides: Any) -> dict[str, Any]:
        """librdkafka config: bootstrap, pass-through properties, then role overrides.

        Pass-through properties win over the role's defaults except where ``overrides`` is a
        correctness setting (the caller passes those last on purpose).
        """
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers}
        config.update(overrides)
        config.update(self.properties)
        return config

    def __repr__(self) -> str:
        masked = mask(self.properties)
        return f"KafkaSettings(bootstrap_servers={self.bootstrap_servers!r}, properties={masked!r})"


@dataclass(frozen=True)
class TopicSettings:
    events: str = "browsing-events"
    suggestions: str = "product-suggestions"
    purchases: str = "purchases"
    accuracy: str = "recommendation-accuracy"
    partitions: int = 12
    replication_factor: int = 1

    def dead_letter(self, topic: str) -> str:
        return f"{topic}.dlq"


@dataclass(frozen=True)
class WorkerSettings:
    kafka: KafkaSettings
    topics: TopicSettings
    group_id: str = "recommender-workers"
    models_dir: Path = Path("models")
    top_k: int = 10
    n_candidates: int = 50
    max_batch_size: int = 500
    max_batch_wait_ms: int = 20
    max_event_bytes: int = 64 * 1024
    max_sessions: int = 2_000_000
    session_idle_ttl_s: float = 3600.0
    #: Bound on records fetched ahead of the loop (librdkafka ``queued.max.messages.kbytes``).
    fetch_buffer_mb: int = 16
    #: Bound on outputs queued for the broker (librdkafka ``queue.buffering.max.kbytes``).
    produce_buffer_mb: int = 32
    shutdown_timeout_s: float = 30.0
    metrics_port: int = 9100
    schema_registry_url: str | None = None
    scoring_threads: int = 1
    scoring_backend: str = "auto"  # "lleaves" (compiled), "lightgbm", or auto: lleaves if installed
    exactly_once: bool = False
    transactional_id: str | None = None
    state_changelog: bool = True

    def __post_init__(self) -> None:
        if self.top_k <= 0 or self.n_candidates < self.top_k:
            raise ConfigError("need 0 < top_k <= n_candidates")
        if self.max_batch_size <= 0 or self.max_batch_wait_ms < 0:
            raise ConfigError("max_batch_size must be positive and max_batch_wait_ms >= 0")
        if self.fetch_buffer_mb < 1 or self.produce_buffer_mb < 1:
            raise ConfigError("fetch_buffer_mb and produce_buffer_mb must be at least 1")


@dataclass(frozen=True)
class MonitorSettings:
    kafka: KafkaSettings
    topics: TopicSettings
    group_id: str = "recommender-monitor"
    models_dir: Path = Path("models")
    k: int = 10
    attribution_window_s: float = 1800.0
    window_s: float = 60.0
    idle_partition_grace_s: float = 5.0
    allowed_lateness_s: float = 2.0
    metrics_port: int = 9101
    schema_registry_url: str | None = None
    exit_at_end: bool = False
