"""The Kubernetes manifests as `kubectl kustomize` renders them: the base (deploy/k8s), the
Prometheus Operator overlay (PodMonitor), the digest-pinning overlay and the runbook-links
component. Scrape wiring for both Prometheus setups, and the hardening: no service account
tokens, a NetworkPolicy, a PodDisruptionBudget, Kafka credentials as files.

kubectl is required (its built-in kustomize renders the manifests), never skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.config import kafka_properties

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "k8s"
OPERATOR = DEPLOY / "overlays" / "prometheus-operator"
DIGEST = DEPLOY / "overlays" / "digest"
RUNBOOK_LINKS = BASE / "components" / "runbook-links"
SECRET_EXAMPLE = BASE / "secret.example.yaml"
SECRET_NAME = "kafka-client-credentials"
WORKLOADS = ("recommender-worker", "recommender-monitor")
DIGEST_IMAGE = re.compile(r"^[a-z0-9.\-/]+/recommender-worker@sha256:[0-9a-f]{64}$")

_rendered: dict[Path, list[dict[str, Any]]] = {}


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail(
            "kubectl not found on PATH: the manifests cannot be rendered (`kubectl kustomize`). "
            "Install kubectl (https://kubernetes.io/docs/tasks/tools/), any version >= 1.27."
        )
    return path


def render(directory: Path) -> list[dict[str, Any]]:
    if directory not in _rendered:
        result = subprocess.run(
            [kubectl(), "kustomize", str(directory)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert result.returncode == 0, f"kubectl kustomize {directory}: {result.stderr}"
        _rendered[directory] = [d for d in yaml.safe_load_all(result.stdout) if d]
    return _rendered[directory]


def kinds(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in kinds(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_templates(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Pod templates of the Deployments and Jobs, by workload name."""
    return {
        d["metadata"]["name"]: d["spec"]["template"]
        for d in docs
        if d["kind"] in ("Deployment", "Job")
    }


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels, matchExpressions with In/NotIn/Exists) against labels."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
    return True


def bootstrap_ports(docs: list[dict[str, Any]]) -> set[int]:
    servers = one(docs, "ConfigMap", "recommender-config")["data"]["KAFKA_BOOTSTRAP_SERVERS"]
    return {int(server.rsplit(":", 1)[1]) for server in servers.split(",")}


# -- rendering -----------------------------------------------------------------------------------


@pytest.mark.parametrize("directory", [BASE, OPERATOR, DIGEST], ids=["base", "operator", "digest"])
def test_renders_with_every_workload_and_no_example_secret(directory: Path) -> None:
    docs = render(directory)
    assert set(pod_templates(docs)) == {*WORKLOADS, "recommender-train"}
    assert not kinds(docs, "Secret"), "the example secret must never be applied"
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "recommender", doc["metadata"]["name"]


def test_base_needs_no_podmonitor_crd_and_the_operator_overlay_adds_one() -> None:
    base, operator = render(BASE), render(OPERATOR)
    assert not kinds(base, "PodMonitor")
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert {key(d) for d in operator} == {key(d) for d in base} | {("PodMonitor", "recommender")}


# -- scrape wiring -------------------------------------------------------------------------------


@pytest.mark.parametrize("directory", [BASE, OPERATOR], ids=["base", "operator"])
def test_annotation_scraping_names_the_metrics_port(directory: Path) -> None:
    pods = pod_templates(render(directory))
    for name in WORKLOADS:
        pod = pods[name]
        annotations = pod["metadata"]["annotations"]
        (container,) = pod["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == ports["metrics"]
        assert annotations["prometheus.io/path"] == "/metrics"


def test_podmonitor_scrapes_the_workers_and_the_monitor_on_their_metrics_port() -> None:
    docs = render(OPERATOR)
    monitor = one(docs, "PodMonitor", "recommender")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    pods = pod_templates(docs)
    selected = {
        name
        for name, pod in pods.items()
        if selects(monitor["spec"]["selector"], pod["metadata"]["labels"])
    }
    assert selected == set(WORKLOADS)
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    for name in WORKLOADS:
        pod = pods[name]
        (container,) = pod["spec"]["containers"]
        assert endpoint["port"] in {p["name"] for p in container["ports"]}
        assert endpoint["path"] == pod["metadata"]["annotations"]["prometheus.io/path"]
    # The alerts find `up` by this label in both setups (prometheus-rules.yaml).
    assert "app.kubernetes.io/name" in monitor["spec"]["podTargetLabels"]
    groups = one(docs, "PrometheusRule", "recommender")["spec"]["groups"]
    rules = " ".join(rule["expr"] for group in groups for rule in group["rules"])
    for name in WORKLOADS:
        assert f'app_kubernetes_io_name="{name}"' in rules
        assert f'pod=~"{name}-.+"' in rules


# -- hardening -----------------------------------------------------------------------------------


def test_no_pod_mounts_a_service_account_token() -> None:
    for name, pod in pod_templates(render(BASE)).items():
        assert pod["spec"].get("automountServiceAccountToken") is False, name


def test_networkpolicy_lets_in_only_monitoring_and_out_only_dns_and_kafka() -> None:
    docs = render(BASE)
    pods = pod_templates(docs)
    policy = one(docs, "NetworkPolicy", "recommender-worker-monitor")["spec"]
    selected = {
        n for n, p in pods.items() if selects(policy["podSelector"], p["metadata"]["labels"])
    }
    assert selected == set(WORKLOADS)
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    (ingress,) = policy["ingress"]
    (source,) = ingress["from"]
    assert source == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }
    (port,) = ingress["ports"]
    for name in WORKLOADS:
        (container,) = pods[name]["spec"]["containers"]
        assert port["port"] in {p["name"] for p in container["ports"]}
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert container[probe]["httpGet"]["port"] == port["port"]
    egress = {(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"]}
    assert {(53, "UDP"), (53, "TCP")} <= egress
    kafka = {port for port, protocol in egress if port != 53 and protocol == "TCP"}
    assert kafka == bootstrap_ports(docs), "the KAFKA PORT of networkpolicy.yaml"
    assert all("to" not in rule or rule["to"] for rule in policy["egress"])


def test_train_job_gets_no_network() -> None:
    docs = render(BASE)
    policy = one(docs, "NetworkPolicy", "recommender-train")["spec"]
    pods = pod_templates(docs)
    selected = {
        n for n, p in pods.items() if selects(policy["podSelector"], p["metadata"]["labels"])
    }
    assert selected == {"recommender-train"}
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    assert not policy.get("ingress") and not policy.get("egress")


def test_workers_have_a_disruption_budget_of_one() -> None:
    docs = render(BASE)
    pdb = one(docs, "PodDisruptionBudget", "recommender-worker")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]
    pods = pod_templates(docs)
    selected = {
        n for n, p in pods.items() if selects(pdb["spec"]["selector"], p["metadata"]["labels"])
    }
    assert selected == {"recommender-worker"}


def test_kafka_credentials_are_files_never_environment(tmp_path: Path) -> None:
    docs = render(BASE)
    pods = pod_templates(docs)
    secret_keys = set(yaml.safe_load(SECRET_EXAMPLE.read_text(encoding="utf-8"))["stringData"])
    client = one(docs, "ConfigMap", "recommender-kafka-client")["data"]
    for name, pod in pods.items():
        for container in all_containers(pod["spec"]):
            for source in container.get("envFrom", []):
                assert "secretRef" not in source, f"{name}/{container['name']}: envFrom a secret"
            for env in container.get("env", []):
                assert "secretKeyRef" not in env.get("valueFrom", {}), f"{name}: {env['name']}"
    for name in WORKLOADS:
        spec = pods[name]["spec"]
        (volume,) = [
            v for v in spec["volumes"] if v.get("secret", {}).get("secretName") == SECRET_NAME
        ]
        assert volume["secret"]["defaultMode"] == 0o440
        (container,) = spec["containers"]
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["readOnly"] is True
        sources = {s.get("configMapRef", {}).get("name") for s in container["envFrom"]}
        assert "recommender-kafka-client" in sources
        # Every credential the client config names is a file of the mounted secret.
        for key in ("WORKER_KAFKA_SASL_USERNAME", "WORKER_KAFKA_SASL_PASSWORD"):
            assert client[key] == f"@{mount['mountPath']}/{key}" and key in secret_keys
    # worker.config reads `@path` values from the files: the secret's content, not the path.
    for key, value in yaml.safe_load(SECRET_EXAMPLE.read_text(encoding="utf-8"))[
        "stringData"
    ].items():
        (tmp_path / key).write_text(value + "\n", encoding="utf-8")
    mount_path = "/var/run/secrets/kafka"
    environ = {k: v.replace(f"@{mount_path}/", f"@{tmp_path}{os.sep}") for k, v in client.items()}
    props = kafka_properties([], environ=environ)
    assert props["sasl.username"] == "recommender"
    assert props["sasl.password"] == "CHANGE-ME-example-only"
    assert props["security.protocol"] == "SASL_SSL"


def test_digest_overlay_pins_every_container_image_by_digest() -> None:
    for name, pod in pod_templates(render(DIGEST)).items():
        for container in all_containers(pod["spec"]):
            assert DIGEST_IMAGE.match(container["image"]), f"{name}: {container['image']}"
    for name, pod in pod_templates(render(BASE)).items():
        for container in all_containers(pod["spec"]):
            assert container["image"] == "recommender-worker:0.1.0", name


def test_runbook_links_component_makes_full_urls(tmp_path: Path) -> None:
    base_url = yaml.safe_load((RUNBOOK_LINKS / "runbook-base.yaml").read_text(encoding="utf-8"))
    url = base_url["data"]["url"]
    relative = Path(os.path.relpath(DEPLOY, tmp_path))
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [str(relative / "k8s")],
                "components": [str(relative / "k8s" / "components" / "runbook-links")],
            }
        ),
        encoding="utf-8",
    )
    docs = render(tmp_path)
    assert not [
        d for d in kinds(docs, "ConfigMap") if d["metadata"]["name"] == "recommender-runbook-base"
    ]
    plain = one(render(BASE), "PrometheusRule", "recommender")["spec"]["groups"]
    linked = one(docs, "PrometheusRule", "recommender")["spec"]["groups"]
    for group, linked_group in zip(plain, linked, strict=True):
        for rule, linked_rule in zip(group["rules"], linked_group["rules"], strict=True):
            relative_url = rule["annotations"]["runbook_url"]
            anchor = relative_url.split("#", 1)[1]
            assert relative_url.startswith("deploy/RUNBOOK.md#")
            assert linked_rule["annotations"]["runbook_url"] == f"{url}#{anchor}"
