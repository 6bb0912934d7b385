"""Fast tests of the local Kafka launcher's pure parts: no JVM, no Maven, no broker."""

from __future__ import annotations

import importlib.util
import json
import socket
import stat
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from devtools import localkafka
from devtools.localkafka import (
    LocalKafkaConfig,
    LocalKafkaError,
    render_log4j2_config,
    render_pom,
    render_server_properties,
    resolve_classpath,
    scram_args,
)

POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}


def parse_properties(text: str) -> dict[str, str]:
    props = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        props[key] = value
    return props


def make_script(directory: Path, name: str, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def cfg(tmp_path: Path) -> LocalKafkaConfig:
    return LocalKafkaConfig(home=tmp_path / "home", port=29092, controller_port=29093)


@pytest.fixture
def sasl_cfg(tmp_path: Path) -> LocalKafkaConfig:
    return LocalKafkaConfig(
        home=tmp_path / "home", port=29092, controller_port=29093, sasl_users=(("alice", "pw-1"),)
    )


@pytest.fixture
def tls_cfg(tmp_path: Path) -> LocalKafkaConfig:
    return LocalKafkaConfig(home=tmp_path / "home", port=29092, controller_port=29093, tls=True)


def test_plaintext_properties_have_the_single_node_settings(cfg: LocalKafkaConfig) -> None:
    props = parse_properties(render_server_properties(cfg))
    expected = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": "1@127.0.0.1:29093",
        "controller.listener.names": "CONTROLLER",
        "listeners": "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093",
        "advertised.listeners": "PLAINTEXT://127.0.0.1:29092",
        "inter.broker.listener.name": "PLAINTEXT",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "num.partitions": "12",
        "log.dirs": str(cfg.home / "data"),
    }
    for key, value in expected.items():
        assert props[key] == value, key
    assert "controller.quorum.bootstrap.servers" not in props
    assert not any(key.startswith("sasl.") for key in props)


def test_listeners_bind_loopback_only(cfg: LocalKafkaConfig) -> None:
    props = parse_properties(render_server_properties(cfg))
    for listener in props["listeners"].split(","):
        assert "//127.0.0.1:" in listener


def test_sasl_properties_use_scram_on_the_client_listener(sasl_cfg: LocalKafkaConfig) -> None:
    props = parse_properties(render_server_properties(sasl_cfg, admin_password="adm-pw"))
    assert props["listeners"] == "SASL_PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert props["advertised.listeners"] == "SASL_PLAINTEXT://127.0.0.1:29092"
    assert props["listener.security.protocol.map"] == (
        "CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT"
    )
    assert props["inter.broker.listener.name"] == "SASL_PLAINTEXT"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
    jaas = props["listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config"]
    assert "ScramLoginModule required" in jaas
    assert 'username="admin" password="adm-pw";' in jaas


def test_sasl_properties_need_the_admin_password(sasl_cfg: LocalKafkaConfig) -> None:
    with pytest.raises(LocalKafkaError):
        render_server_properties(sasl_cfg)


def test_tls_properties_serve_the_client_listener_over_ssl(tls_cfg: LocalKafkaConfig) -> None:
    props = parse_properties(render_server_properties(tls_cfg, keystore_password="ks-pw"))
    assert props["listeners"] == "SSL://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert props["advertised.listeners"] == "SSL://127.0.0.1:29092"
    assert props["listener.security.protocol.map"] == "CONTROLLER:PLAINTEXT,SSL:SSL"
    assert props["inter.broker.listener.name"] == "SSL"
    tls_dir = tls_cfg.home / "tls"
    assert props["ssl.keystore.type"] == "PKCS12"
    assert props["ssl.keystore.location"] == str(tls_dir / "broker.p12")
    assert props["ssl.keystore.password"] == props["ssl.key.password"] == "ks-pw"
    assert props["ssl.truststore.type"] == "PEM"
    assert props["ssl.truststore.location"] == str(tls_dir / "ca.pem") == str(tls_cfg.ca_file)
    assert props["ssl.client.auth"] == "none"
    assert not any(key.startswith("sasl.") for key in props)


def test_sasl_ssl_properties_combine_scram_and_tls(tmp_path: Path) -> None:
    cfg = LocalKafkaConfig(
        home=tmp_path, port=29092, controller_port=29093, tls=True, sasl_users=(("alice", "p"),)
    )
    assert cfg.security_protocol == "SASL_SSL"
    props = parse_properties(
        render_server_properties(cfg, admin_password="adm-pw", keystore_password="ks-pw")
    )
    assert props["listeners"] == "SASL_SSL://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert props["listener.security.protocol.map"] == "CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL"
    assert props["inter.broker.listener.name"] == "SASL_SSL"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    jaas = props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    assert 'username="admin" password="adm-pw";' in jaas
    assert props["ssl.keystore.password"] == "ks-pw"


def test_tls_properties_need_the_keystore_password(tls_cfg: LocalKafkaConfig) -> None:
    with pytest.raises(LocalKafkaError, match="keystore password"):
        render_server_properties(tls_cfg)


@pytest.mark.parametrize(
    ("tls", "users", "protocol"),
    [
        (False, (), "PLAINTEXT"),
        (True, (), "SSL"),
        (False, (("alice", "p"),), "SASL_PLAINTEXT"),
        (True, (("alice", "p"),), "SASL_SSL"),
    ],
)
def test_security_protocol_of_each_mode(
    tmp_path: Path, tls: bool, users: tuple[tuple[str, str], ...], protocol: str
) -> None:
    cfg = LocalKafkaConfig(home=tmp_path, port=1, controller_port=2, tls=tls, sasl_users=users)
    assert cfg.security_protocol == protocol


def test_scram_args_for_storage_tool() -> None:
    assert scram_args([("alice", "pw-1"), ("admin", "x")]) == [
        "--add-scram",
        "SCRAM-SHA-512=[name=alice,password=pw-1]",
        "--add-scram",
        "SCRAM-SHA-512=[name=admin,password=x]",
    ]


def test_admin_client_config_in_sasl_mode(sasl_cfg: LocalKafkaConfig) -> None:
    conf = localkafka.admin_client_config(sasl_cfg, user="alice")
    assert conf == {
        "bootstrap.servers": "127.0.0.1:29092",
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "alice",
        "sasl.password": "pw-1",
    }
    admin = localkafka.admin_client_config(sasl_cfg)
    assert admin["sasl.username"] == "admin"
    secret = sasl_cfg.home / "config" / "admin.secret"
    assert secret.read_text() == admin["sasl.password"]
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_admin_client_config_in_tls_modes(tmp_path: Path) -> None:
    tls = LocalKafkaConfig(home=tmp_path, port=29092, controller_port=29093, tls=True)
    ca = str(tmp_path.resolve() / "tls" / "ca.pem")
    assert localkafka.admin_client_config(tls) == {
        "bootstrap.servers": "127.0.0.1:29092",
        "security.protocol": "SSL",
        "ssl.ca.location": ca,
    }
    sasl_ssl = LocalKafkaConfig(
        home=tmp_path, port=29092, controller_port=29093, tls=True, sasl_users=(("alice", "p"),)
    )
    assert localkafka.admin_client_config(sasl_ssl, user="alice") == {
        "bootstrap.servers": "127.0.0.1:29092",
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": ca,
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "alice",
        "sasl.password": "p",
    }


@pytest.mark.parametrize("running_tls", [True, False])
def test_a_running_broker_is_not_reused_in_another_tls_mode(
    tmp_path: Path, running_tls: bool
) -> None:
    cfg = LocalKafkaConfig(home=tmp_path, port=29092, controller_port=29093, tls=not running_tls)
    record = {"pid": 4242, "port": 29092, "controller_port": 29093, "sasl": False}
    record["tls"] = running_tls
    with pytest.raises(LocalKafkaError, match=f"tls={running_tls}; stop it first"):
        localkafka._adopt_running(cfg, record, timeout_s=1)


def test_status_names_the_ca_file_of_a_tls_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = LocalKafkaConfig(home=tmp_path, port=29092, controller_port=29093, tls=True)
    record = {"pid": 4242, "port": 29092, "sasl": False, "tls": True}
    cfg.pid_file.write_text(json.dumps(record))
    monkeypatch.setattr(localkafka, "_is_our_broker", lambda pid, cfg: True)
    out = localkafka.status(cfg)
    assert (out["running"], out["tls"], out["ca_file"]) == (True, True, str(cfg.ca_file))
    cfg.pid_file.write_text(json.dumps({**record, "tls": False}))
    assert localkafka.status(cfg)["ca_file"] is None


@pytest.mark.parametrize(
    "users",
    [
        (("bad name", "pw"),),
        (("alice", 'quote"d'),),
        (("alice", "comma,pw"),),
        (("alice", "br]acket"),),
        (("alice", ""),),
    ],
)
def test_unsafe_sasl_users_are_refused(tmp_path: Path, users: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(LocalKafkaError):
        LocalKafkaConfig(home=tmp_path, port=1, controller_port=2, sasl_users=users)


def test_ports_must_differ(tmp_path: Path) -> None:
    with pytest.raises(LocalKafkaError, match="differ"):
        LocalKafkaConfig(home=tmp_path, port=5, controller_port=5)


def test_defaults_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKER_LOCAL_KAFKA_HOME", str(tmp_path / "k"))
    monkeypatch.setenv("WORKER_LOCAL_KAFKA_PORT", "19555")
    cfg = LocalKafkaConfig()
    assert cfg.home == (tmp_path / "k").resolve()
    assert cfg.port == 19555
    assert cfg.bootstrap == "127.0.0.1:19555"
    monkeypatch.delenv("WORKER_LOCAL_KAFKA_HOME")
    assert LocalKafkaConfig().home == localkafka.REPO_ROOT / "var" / "kafka"


def test_pom_lists_broker_and_log4j2_backend() -> None:
    root = ET.fromstring(render_pom("4.1.1"))
    assert root.findtext("m:packaging", namespaces=POM_NS) == "pom"
    deps = {
        d.findtext("m:artifactId", namespaces=POM_NS): d.findtext("m:version", namespaces=POM_NS)
        for d in root.findall("m:dependencies/m:dependency", POM_NS)
    }
    assert deps == {
        "kafka_2.13": "4.1.1",
        "log4j-api": "2.24.3",
        "log4j-core": "2.24.3",
        "log4j-slf4j-impl": "2.24.3",
        "slf4j-api": "1.7.36",
    }
    managed = root.find("m:dependencyManagement/m:dependencies/m:dependency", POM_NS)
    assert managed is not None
    assert managed.findtext("m:version", namespaces=POM_NS) == "1.7.36"


def test_log4j_version_follows_the_kafka_line() -> None:
    assert localkafka.log4j_version("4.0.1") == "2.24.3"
    assert localkafka.log4j_version("4.2.0") == "2.25.3"
    assert localkafka.log4j_version("4.3.1") == "2.25.4"


def test_log4j2_config_is_xml_writing_server_log(cfg: LocalKafkaConfig) -> None:
    text = render_log4j2_config(cfg)
    root = ET.fromstring(text)
    rolling = root.find("Appenders/RollingFile")
    assert rolling is not None
    assert rolling.get("fileName") == str(cfg.home / "logs" / "server.log")
    assert root.find("Loggers/Root").get("level") == "INFO"
    assert root.find("Appenders/Console/ThresholdFilter").get("level") == "WARN"


def test_missing_java_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(LocalKafkaError, match="apt-get install openjdk-17-jre-headless maven"):
        localkafka.find_java()


def test_old_java_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    make_script(bin_dir, "java", "echo 'openjdk version \"11.0.21\" 2023-10-17' >&2\n")
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(LocalKafkaError, match="Java 11.*17"):
        localkafka.find_java()


def test_java_8_version_string_is_understood(tmp_path: Path) -> None:
    java = make_script(tmp_path, "java", "echo 'java version \"1.8.0_392\"' >&2\n")
    assert localkafka._java_major(str(java)) == 8


def test_missing_mvn_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("WORKER_LOCAL_KAFKA_LIBS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(LocalKafkaError, match="mvn.*apt-get install"):
        resolve_classpath(LocalKafkaConfig(home=tmp_path, port=1, controller_port=2))


def test_failing_mvn_output_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    make_script(bin_dir, "mvn", "echo '[ERROR] Could not resolve dependencies: boom'\nexit 1\n")
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("WORKER_LOCAL_KAFKA_LIBS_CACHE", str(tmp_path / "cache"))
    cfg = LocalKafkaConfig(home=tmp_path, port=1, controller_port=2, kafka_version="4.9.9")
    with pytest.raises(LocalKafkaError, match="Could not resolve dependencies: boom"):
        resolve_classpath(cfg)
    assert not (tmp_path / "cache" / "4.9.9" / "libs" / ".complete").exists()
    assert (tmp_path / "cache" / "4.9.9" / "pom.xml").is_file()


def test_resolved_cache_is_reused_without_mvn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKER_LOCAL_KAFKA_LIBS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no mvn anywhere
    libs = tmp_path / "cache" / "4.1.1" / "libs"
    libs.mkdir(parents=True)
    (libs / ".complete").write_text("{}")
    cfg = LocalKafkaConfig(home=tmp_path, port=1, controller_port=2)
    assert resolve_classpath(cfg) == libs
    assert localkafka.libs_dir(cfg) == libs


def test_start_refuses_a_port_taken_by_something_else(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        cfg = LocalKafkaConfig(home=tmp_path / "home", port=port, controller_port=port + 1)
        with pytest.raises(LocalKafkaError, match=f"127.0.0.1:{port} is taken"):
            localkafka.start(cfg, timeout_s=5)


def test_status_and_stop_without_a_broker(tmp_path: Path) -> None:
    cfg = LocalKafkaConfig(home=tmp_path, port=29192, controller_port=29193)
    assert localkafka.status(cfg)["running"] is False
    assert localkafka.stop(cfg) is False


def test_stale_pid_file_is_ignored_and_removed(tmp_path: Path) -> None:
    cfg = LocalKafkaConfig(home=tmp_path, port=29192, controller_port=29193)
    (tmp_path / "kafka.pid").write_text(json.dumps({"pid": 999_999_999, "port": 29192}))
    assert localkafka.status(cfg)["running"] is False
    assert not (tmp_path / "kafka.pid").exists()


def test_cli_status_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert localkafka.main(["status", "--home", str(tmp_path), "--port", "29292"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["running"] is False
    assert out["home"] == str(tmp_path.resolve())


def test_cli_parses_repeatable_sasl_users() -> None:
    args = localkafka._build_parser().parse_args(
        ["start", "--port", "29392", "--sasl-user", "a:p1", "--sasl-user", "b:p:2"]
    )
    cfg = localkafka._config_from_args(args)
    assert cfg.sasl_users == (("a", "p1"), ("b", "p:2"))
    assert (cfg.port, cfg.controller_port) == (29392, 29393)
    with pytest.raises(SystemExit):
        localkafka._build_parser().parse_args(["start", "--sasl-user", "nopassword"])


def test_cli_parses_tls() -> None:
    args = localkafka._build_parser().parse_args(["start", "--port", "29392", "--tls"])
    assert localkafka._config_from_args(args).tls is True
    args = localkafka._build_parser().parse_args(["start", "--port", "29392"])
    assert localkafka._config_from_args(args).tls is False


def _load_kafka_fixtures():
    path = Path(__file__).resolve().parents[1] / "kafka_fixtures.py"
    spec = importlib.util.spec_from_file_location("kafka_fixtures_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fixture_prefers_an_existing_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    fixtures = _load_kafka_fixtures()
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.example:9092")
    bootstrap, cleanup = fixtures.acquire_broker()
    assert bootstrap == "kafka.example:9092"
    cleanup()


def test_fixture_free_ports_are_distinct() -> None:
    fixtures = _load_kafka_fixtures()
    ports = fixtures.free_ports(3)
    assert len(set(ports)) == 3


def test_cluster_ids_never_start_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    dash_first = uuid.UUID(bytes=b"\xfb" + bytes(15))  # base64url "-w..."
    ids = iter([dash_first, uuid.UUID(int=42)])
    monkeypatch.setattr(localkafka.uuid, "uuid4", lambda: next(ids))
    cluster_id = localkafka.new_cluster_id()
    assert not cluster_id.startswith("-")
    assert len(cluster_id) == 22
