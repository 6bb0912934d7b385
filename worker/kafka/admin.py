"""Topic creation with explicit partition counts, and a bounded wait for the cluster."""

from __future__ import annotations

import re
import time
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from worker.config import KafkaSettings, TopicSettings, is_secret
from worker.core.errors import BrokerError
from worker.kafka.clients import client_hooks

#: The dead-letter topics keep the original bytes of oversized records, up to this size.
DLQ_MAX_MESSAGE_BYTES = 2 * 1024 * 1024


def admin_client(settings: KafkaSettings, log: Any = None) -> AdminClient:
    """An admin client whose librdkafka log lines and errors go to the structured log (the
    process's logger unless ``log`` is given), never raw to stderr: a line like "Purging 1
    unserved events from background queue" when it is destroyed would break the JSON log."""
    config = settings.client_config()
    config.update(client_hooks(settings, log if log is not None else structlog.get_logger()))
    return AdminClient(config)


class _Refusals:
    """What librdkafka's ``error_cb`` reported while waiting for the cluster: authentication and
    TLS handshake failures, which end the wait at once, turned into one clear error that names
    the bootstrap and the settings to check, never a secret."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._props = settings.properties
        self._secrets = [str(v) for k, v in self._props.items() if is_secret(k) and v]
        self.auth_errors: list[str] = []
        self.tls_errors: list[str] = []

    def scrub(self, text: str) -> str:
        """``text`` with every secret value of the settings replaced by ``***``."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def on_error(self, err: KafkaError) -> None:
        """librdkafka ``error_cb``: keep authentication and TLS failures."""
        code = err.code()
        if code in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED):
            self.auth_errors.append(err.str())
        elif code == KafkaError._SSL or (
            code == KafkaError._TRANSPORT and "certificate verify failed" in err.str()
        ):
            self.tls_errors.append(err.str())

    def error(self) -> BrokerError | None:
        """The error ending the wait at once, if the broker refused the client."""
        if self.auth_errors:
            return self._auth_failed()
        if self.tls_errors:
            return self._tls_failed()
        return None

    def _protocol(self) -> str:
        return str(self._props.get("security.protocol", "plaintext")).upper()

    def _auth_failed(self) -> BrokerError:
        props, protocol = self._props, self._protocol()
        mechanism = props.get("sasl.mechanism") or props.get("sasl.mechanisms") or "GSSAPI"
        how = (
            f"SASL mechanism {mechanism}, user {props.get('sasl.username') or '<unset>'}"
            if protocol.startswith("SASL")
            else f"security.protocol {protocol}"
        )
        # librdkafka's "<broker>: SASL authentication error: <why> (after N ms in state S)"
        reason = self.auth_errors[0].split(": ", 1)[-1]
        return BrokerError(
            self.scrub(
                f"authentication failed for {self._settings.bootstrap_servers} ({how}): "
                f"check the credentials ({_without_state(reason)})"
            )
        )

    def _tls_failed(self) -> BrokerError:
        bootstrap, protocol = self._settings.bootstrap_servers, self._protocol()
        # librdkafka's "<broker>: [SSL handshake failed: ]<openssl error>[: <hint>] (after ...)"
        reason = re.sub(r"^\S+: (SSL handshake failed: )?", "", _without_state(self.tls_errors[0]))
        verify = "certificate verify failed"
        if verify in reason:
            openssl_error = reason[: reason.index(verify) + len(verify)]  # without the hint
            return BrokerError(
                self.scrub(
                    f"TLS handshake with {bootstrap} failed: the broker's "
                    f"certificate is not trusted ({openssl_error}); set ssl.ca.location to the "
                    f"CA certificate that signed it (security.protocol {protocol})"
                )
            )
        return BrokerError(
            self.scrub(
                f"TLS handshake with {bootstrap} failed ({reason}): check "
                f"security.protocol ({protocol}) and the ssl.* settings, e.g. ssl.ca.location"
            )
        )


def _without_state(reason: str) -> str:
    return re.sub(r"\s*\(after \d+ms in state \w+\)\s*$", "", reason)


class _QuietLogger:
    """Takes librdkafka's own log lines while waiting: every refused reconnect would otherwise
    print a FAIL line on stderr; the outcome is reported once, by the BrokerError."""

    def log(self, *_args: Any, **_kwargs: Any) -> None:
        pass


def wait_for_cluster(settings: KafkaSettings, timeout_s: float = 30.0) -> int:
    """Block until the cluster answers a metadata request; return its broker count.

    Authentication failures (wrong SASL credentials, refused client certificate) and failed
    TLS handshakes (the broker's certificate not trusted, no common protocol version) are not
    worth waiting for: librdkafka reports them through ``error_cb`` only (``list_topics`` just
    times out with a transport error), so they are recorded there and end the wait at once.

    Raises:
        BrokerError: authentication refused (the message names the bootstrap, mechanism and
            user, never the password), TLS handshake failed (names the bootstrap and points at
            ``ssl.ca.location``), or no answer within ``timeout_s`` (the last client error is
            included).
    """
    refusals = _Refusals(settings)
    config: dict[str, Any] = settings.client_config()
    config["error_cb"] = refusals.on_error
    if "debug" not in settings.properties:
        config["logger"] = _QuietLogger()
    try:
        admin = AdminClient(config)
    except Exception as exc:  # KafkaException for an invalid configuration
        raise BrokerError(f"cannot create a Kafka client: {refusals.scrub(str(exc))}") from None

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            return len(
                admin.list_topics(timeout=min(1.0, max(0.2, deadline - time.monotonic()))).brokers
            )
        except KafkaException as exc:
            last = exc
        admin.poll(0)  # serves error_cb
        if (error := refusals.error()) is not None:
            raise error
        time.sleep(0.2)
    admin.poll(0)
    if (error := refusals.error()) is not None:
        raise error
    raise BrokerError(
        refusals.scrub(
            f"Kafka at {settings.bootstrap_servers} did not answer in {timeout_s:.0f} s: {last}"
        )
    )


def project_topics(topics: TopicSettings) -> dict[str, dict[str, str]]:
    """Every topic the project uses, with its configuration."""
    data = {"retention.ms": str(7 * 24 * 3600 * 1000)}
    dlq = {
        "retention.ms": str(14 * 24 * 3600 * 1000),
        "max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES),
    }
    names = [topics.events, topics.suggestions, topics.purchases, topics.accuracy]
    config = {name: dict(data) for name in names}
    for name in (topics.events, topics.suggestions, topics.purchases):
        config[topics.dead_letter(name)] = dict(dlq)
    return config


def ensure_topics(
    settings: KafkaSettings, topics: TopicSettings, log: Any, timeout_s: float = 30.0
) -> list[str]:
    """Create the project's topics that do not exist (events, suggestions and purchases with
    ``topics.partitions`` partitions, so suggestions and purchases are co-partitioned by user);
    return the names created.

    Raises:
        BrokerError: creation failed for another reason than "already exists", or an existing
            event/suggestion/purchase topic has a partition count that breaks co-partitioning.
    """
    admin = admin_client(settings)
    wanted = project_topics(topics)
    existing = admin.list_topics(timeout=timeout_s).topics
    new = [
        NewTopic(
            name,
            num_partitions=1 if name == topics.accuracy else topics.partitions,
            replication_factor=topics.replication_factor,
            config=config,
        )
        for name, config in wanted.items()
        if name not in existing
    ]
    created = []
    if new:
        for name, future in admin.create_topics(new, operation_timeout=timeout_s).items():
            try:
                future.result()
                created.append(name)
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise BrokerError(f"cannot create topic {name}: {exc}") from exc
    metadata = admin.list_topics(timeout=timeout_s).topics
    counts = {
        name: len(metadata[name].partitions)
        for name in (topics.suggestions, topics.purchases)
        if name in metadata
    }
    if len(set(counts.values())) > 1:
        raise BrokerError(
            f"suggestions and purchases must have equal partition counts, have {counts}"
        )
    if created:
        log.info("topics_created", topics=sorted(created), partitions=topics.partitions)
    return created


def partition_count(settings: KafkaSettings, topic: str, timeout_s: float = 30.0) -> int:
    """Partitions of an existing topic.

    Raises:
        BrokerError: the topic does not exist.
    """
    topics = admin_client(settings).list_topics(topic, timeout=timeout_s).topics
    if topic not in topics or topics[topic].error is not None:
        raise BrokerError(f"topic {topic} does not exist")
    return len(topics[topic].partitions)
