"""No secret reaches a log line or an error message: settings as the worker logs them at start,
configuration errors, client error callbacks, librdkafka's own log lines, and the cluster wait."""

from __future__ import annotations

import socket

import pytest
import structlog
from structlog.testing import capture_logs

from worker.config import KafkaSettings, kafka_properties, mask
from worker.core.errors import BrokerError, ConfigError
from worker.kafka.admin import wait_for_cluster
from worker.kafka.clients import _error_cb, _LibrdkafkaLog
from worker.ops.logging import configure_logging

SECRET = "s3cr3t-Pa55w0rd-xyz"


@pytest.fixture(autouse=True)
def _reset_structlog():
    yield
    structlog.reset_defaults()


class _Err:
    """The parts of confluent_kafka.KafkaError that ``_error_cb`` reads."""

    def __init__(self, name: str, text: str) -> None:
        self._name, self._text = name, text

    def name(self) -> str:
        return self._name

    def str(self) -> str:
        return self._text

    def fatal(self) -> bool:
        return False


def _settings(tmp_path) -> KafkaSettings:
    secret_file = tmp_path / "password"
    secret_file.write_text(SECRET + "\n", encoding="utf-8")
    environ = {
        "WORKER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "WORKER_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "WORKER_KAFKA_SASL_USERNAME": "alice",
        "WORKER_KAFKA_SASL_PASSWORD": f"@{secret_file}",
    }
    props = kafka_properties(
        [
            f"ssl.key.password={SECRET}",
            f"sasl.oauthbearer.client.secret={SECRET}",
            f"ssl.keystore.password={SECRET}",
            f"ssl.key.pem={SECRET}",
            "ssl.ca.location=/etc/ssl/ca.pem",
        ],
        environ,
    )
    assert props["sasl.password"] == SECRET  # read from the file, newline stripped
    return KafkaSettings("broker:9093", props)


def test_worker_start_line_shows_settings_with_every_secret_masked(tmp_path, capsys):
    settings = _settings(tmp_path)
    log = configure_logging(fmt="json", component="run")
    # exactly what Worker.run logs at start
    log.info("worker_started", kafka=repr(settings))
    log.info("settings", properties=mask(settings.properties))
    err = capsys.readouterr().err
    assert "worker_started" in err and "alice" in err and "SCRAM-SHA-512" in err
    assert "/etc/ssl/ca.pem" in err  # non-secret TLS settings stay visible
    assert SECRET not in err
    assert SECRET not in repr(settings) and SECRET not in str(settings)
    with capture_logs() as logs:
        structlog.get_logger().info("worker_started", kafka=repr(settings))
    assert SECRET not in repr(logs)


def test_console_renderer_does_not_show_secrets_either(tmp_path, capsys):
    log = configure_logging(fmt="console", component="run")
    log.info("worker_started", kafka=repr(_settings(tmp_path)))
    err = capsys.readouterr().err
    assert "worker_started" in err and SECRET not in err


def test_unreadable_secret_file_error_names_the_key_but_not_the_value(tmp_path, capsys):
    missing = tmp_path / "no-such-dir" / "password"
    with pytest.raises(ConfigError) as info:
        kafka_properties([f"sasl.password=@{missing}"], {})
    assert "sasl.password" in str(info.value) and str(missing) not in str(info.value)
    with pytest.raises(ConfigError) as info_env:
        kafka_properties([], {"WORKER_KAFKA_SASL_PASSWORD": f"@{missing}"})
    log = configure_logging(fmt="json", component="run")
    for exc in (info.value, info_env.value):
        log.error("failed", error_class=type(exc).__name__, error=str(exc))  # as cli.main does
    assert SECRET not in capsys.readouterr().err


def test_malformed_pass_through_pair_is_not_echoed():
    with pytest.raises(ConfigError) as info:
        kafka_properties([f"sasl.password:{SECRET}"], {})
    assert SECRET not in str(info.value)


def test_configuration_errors_of_the_command_line_never_show_a_secret(monkeypatch, capsys):
    """Through `worker` itself: a malformed -X pair (the pass-through, reported as a fatal log
    line) and a bad value of a secret-looking setting (the one-line parser error) exit 2
    without the secret."""
    from worker import cli
    from worker.config import Setting, as_int

    monkeypatch.setattr(cli, "_exit_cleanly_on_sigterm_while_starting", lambda: None)
    monkeypatch.setenv("WORKER_LOG_FORMAT", "json")
    assert cli.main(["topics", "-X", f"sasl.password:{SECRET}"]) == 2
    err = capsys.readouterr().err
    assert "-X expects key=value" in err and SECRET not in err
    parser = cli.SettingsParser(prog="worker")
    parser.add_settings(Setting("token_ttl", "--token-ttl", as_int, 1, env="WORKER_TOKEN_TTL"))
    monkeypatch.setenv("WORKER_TOKEN_TTL", SECRET)
    with pytest.raises(SystemExit) as exited:
        parser.parse_args([])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "--token-ttl / WORKER_TOKEN_TTL" in err
    assert SECRET not in err


def test_password_starting_with_at_sign_is_not_echoed():
    with pytest.raises(ConfigError) as info:
        kafka_properties([f"sasl.password=@{SECRET}"], {})
    assert SECRET not in str(info.value)


def test_authentication_failure_is_logged_once_per_client_without_details():
    with capture_logs() as logs:
        on_error = _error_cb(structlog.get_logger())
        for _ in range(20):  # librdkafka reports it again on every reconnect
            on_error(_Err("_AUTHENTICATION", "SASL authentication error: invalid credentials"))
        on_error(_Err("_TRANSPORT", "connection refused"))
    auth = [r for r in logs if r["event"] == "kafka_authentication_failed"]
    assert len(auth) == 1 and auth[0]["log_level"] == "error"
    assert [r["event"] for r in logs].count("kafka_client_error") == 1
    assert SECRET not in repr(logs)


def test_librdkafka_log_lines_become_events_and_auth_repeats_are_dropped():
    with capture_logs() as logs:
        sink = _LibrdkafkaLog(structlog.get_logger())
        for _ in range(10):
            sink.log(
                40,
                "%s [%s] %s",
                "FAIL",
                "rdkafka#producer-1",
                "sasl_ssl://broker:9093/bootstrap: SASL authentication error: "
                "Authentication failed during authentication due to invalid credentials",
            )
        sink.log(30, "%s [%s] %s", "FAIL", "rdkafka#producer-1", "Connection refused")
    assert [(r["event"], r["log_level"], r["message"]) for r in logs] == [
        ("librdkafka", "warning", "Connection refused")
    ]


def test_cluster_wait_error_does_not_contain_the_password(capfd):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once closed
    settings = KafkaSettings(
        f"127.0.0.1:{port}",
        {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "alice",
            "sasl.password": SECRET,
        },
    )
    with pytest.raises(BrokerError) as info:
        wait_for_cluster(settings, timeout_s=1.5)
    assert "did not answer" in str(info.value)
    assert SECRET not in str(info.value)
    captured = capfd.readouterr()  # file descriptors: librdkafka writes to fd 2 directly
    assert SECRET not in captured.err + captured.out
    # librdkafka's own reconnect lines are not printed on stderr during the wait
    assert "%3|" not in captured.err


def test_invalid_client_configuration_error_does_not_contain_the_password():
    settings = KafkaSettings("127.0.0.1:1", {"sasl.password": SECRET, "no.such.property": SECRET})
    with pytest.raises(BrokerError) as info:
        wait_for_cluster(settings, timeout_s=1)
    assert SECRET not in str(info.value)
