"""The deployment files agree with the code: commands the CLI accepts, settings it reads, metric
names it exports, probe paths and ports it serves, and the scaling and shutdown invariants.

Covers docker-compose.yml, deploy/Dockerfile, deploy/README.md and every YAML in deploy/k8s.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement

from worker import cli
from worker.ops import health, metrics

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
README = DEPLOY / "README.md"
K8S_FILES = sorted(K8S.glob("*.yaml"))
ENV_NAME = re.compile(r"\bWORKER_[A-Z0-9_]*[A-Z0-9]\b|\bWORKER_KAFKA_\b")
KAFKA_PASS_THROUGH = "WORKER_KAFKA_"


# -- helpers -------------------------------------------------------------------------------------


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def k8s_docs() -> list[dict[str, Any]]:
    return [doc for path in K8S_FILES for doc in load_all(path)]


def k8s_kind(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d
        for d in k8s_docs()
        if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def compose() -> dict[str, Any]:
    return load_all(COMPOSE)[0]


def pod_specs() -> list[dict[str, Any]]:
    specs = []
    for doc in k8s_docs():
        if doc.get("kind") in ("Deployment", "Job"):
            specs.append(doc["spec"]["template"]["spec"])
        elif doc.get("kind") == "CronJob":
            specs.append(doc["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    return specs


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def configmap() -> dict[str, str]:
    return k8s_kind("ConfigMap", "recommender-config")["data"]


def worker_argvs_in_script(script: str) -> list[list[str]]:
    """Every `worker ...` command line in a shell script (lines, `&&`, `||` and `;` split)."""
    argvs = []
    for line in script.splitlines():
        for part in re.split(r"&&|\|\||;", line):
            tokens = shlex.split(part, comments=True)
            if tokens and tokens[0] == "worker":
                argvs.append(tokens[1:])
    return argvs


def container_argv(command: list[str] | None, args: list[str] | None) -> list[list[str]]:
    """`worker` argument vectors a container (entrypoint/command + args) runs."""
    full = list(command or ["worker"]) + list(args or [])  # the image's ENTRYPOINT is worker
    if full[:1] == ["worker"]:
        return [full[1:]]
    if full[:2] in (["/bin/sh", "-c"], ["sh", "-c"]):
        return [argv for script in full[2:] for argv in worker_argvs_in_script(script)]
    return []


def compose_argvs() -> dict[str, list[list[str]]]:
    result = {}
    for name, svc in compose()["services"].items():
        if "recommender-worker" not in svc.get("image", ""):
            continue
        entrypoint, command = svc.get("entrypoint"), svc.get("command")
        if isinstance(entrypoint, str):
            entrypoint = shlex.split(entrypoint)
        if isinstance(command, str):
            command = shlex.split(command)
        result[name] = container_argv(entrypoint, command)
    return result


def k8s_argvs() -> list[list[str]]:
    argvs = []
    for spec in pod_specs():
        for c in containers(spec):
            if "recommender-worker" in c["image"]:
                argvs.extend(container_argv(c.get("command"), c.get("args")))
    return argvs


@pytest.fixture
def parser(monkeypatch: pytest.MonkeyPatch):
    """The real CLI parser with its code defaults (no WORKER_* from the test environment)."""
    import os

    for name in list(os.environ):
        if name.startswith("WORKER_") or name == "KAFKA_BOOTSTRAP_SERVERS":
            monkeypatch.delenv(name)
    return cli.build_parser()


def parse(parser, argv: list[str]):
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:  # argparse reports errors by exiting
        pytest.fail(f"`worker {' '.join(argv)}` is rejected by worker.cli (exit {exc.code})")


def source_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "worker").rglob("*.py"))


# -- parsing ------------------------------------------------------------------------------------


def test_every_deploy_yaml_parses():
    assert K8S_FILES, "deploy/k8s has no YAML"
    for path in [COMPOSE, *K8S_FILES]:
        docs = load_all(path)
        assert docs, f"{path} is empty"
        for doc in docs:
            assert isinstance(doc, dict), f"{path}: a document is not a mapping"


def test_kustomization_lists_every_manifest_but_the_example_secret():
    kustomization = load_all(K8S / "kustomization.yaml")[0]
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S_FILES} - {"kustomization.yaml"}
    assert "secret.example.yaml" not in listed, "the example secret must not be applied"
    assert listed == on_disk - {"secret.example.yaml"}


def test_example_secret_is_marked_as_an_example():
    text = (K8S / "secret.example.yaml").read_text(encoding="utf-8")
    assert "EXAMPLE" in text.upper().split("\n", 1)[0]


# -- commands -------------------------------------------------------------------------------------


def test_compose_commands_are_accepted_by_the_cli(parser):
    argvs = compose_argvs()
    expected = {
        "topics": "topics",
        "train": "train",
        "worker": "run",
        "monitor": "monitor",
        "simulator": "simulate",
        "retrain": "retrain",
    }
    for service, command in expected.items():
        assert service in argvs, f"compose has no {service} service using the image"
        assert command in [argv[0] for argv in argvs[service]], f"{service} does not run {command}"
    for service, vectors in argvs.items():
        assert vectors, f"compose service {service} runs no `worker` command"
        for argv in vectors:
            parse(parser, argv)


def test_k8s_commands_are_accepted_by_the_cli(parser):
    argvs = k8s_argvs()
    assert {argv[0] for argv in argvs} >= {"run", "monitor", "simulate", "train", "retrain"}
    for argv in argvs:
        parse(parser, argv)


def test_train_writes_where_the_worker_reads(parser):
    cm = configmap()
    job = k8s_kind("Job")
    train = [a for a in k8s_argvs() if a[0] == "train"]
    assert len(train) == 1
    args = parse(parser, train[0])
    assert str(args.models_dir) == cm["WORKER_MODELS_DIR"]
    mounts = {
        m["mountPath"]
        for c in job["spec"]["template"]["spec"]["containers"]
        for m in c.get("volumeMounts", [])
    }
    assert cm["WORKER_MODELS_DIR"] in mounts


# -- settings -----------------------------------------------------------------------------------


def deploy_env_names() -> set[str]:
    names: set[str] = set()
    for path in [COMPOSE, DOCKERFILE, README, *K8S_FILES]:
        names |= set(ENV_NAME.findall(path.read_text(encoding="utf-8")))
    return names


def test_every_worker_env_var_exists_in_the_code():
    source = source_text()
    names = deploy_env_names()
    assert "WORKER_SHUTDOWN_TIMEOUT_S" in names
    unknown = sorted(n for n in names if not n.startswith(KAFKA_PASS_THROUGH) and n not in source)
    assert not unknown, f"WORKER_* variables the code never reads: {unknown}"


def test_kafka_pass_through_env_vars_name_librdkafka_properties():
    """WORKER_KAFKA_<KEY> becomes librdkafka property <key> (`_` -> `.`): it must exist."""
    from confluent_kafka import KafkaException, Producer

    from worker.config import kafka_properties

    names = {
        n
        for n in deploy_env_names()
        if n.startswith(KAFKA_PASS_THROUGH) and n != KAFKA_PASS_THROUGH
    }
    assert {"WORKER_KAFKA_SASL_USERNAME", "WORKER_KAFKA_SASL_PASSWORD"} <= names
    for name in sorted(names):
        ((key, value),) = kafka_properties([], environ={name: "x"}).items()
        try:
            Producer({key: value, "log_level": 0})
        except KafkaException as exc:  # bad values are fine here, unknown names are not
            assert "No such configuration property" not in str(exc), f"{name}: {exc}"


def test_configmap_values_are_accepted_by_the_cli(monkeypatch: pytest.MonkeyPatch):
    """The CLI parses the ConfigMap's values (a non-numeric port or timeout would fail at start)."""
    for name, value in configmap().items():
        monkeypatch.setenv(name, value)
    parser = cli.build_parser()
    run = parser.parse_args(["run"])
    assert run.group_id == configmap()["WORKER_GROUP_ID"]
    assert run.partitions == int(configmap()["WORKER_TOPIC_PARTITIONS"])
    parser.parse_args(["monitor"])


# -- scaling and shutdown ------------------------------------------------------------------------


def partitions(parser) -> int:
    configured = configmap().get("WORKER_TOPIC_PARTITIONS")
    return int(configured) if configured else parser.parse_args(["run"]).partitions


def test_keda_scales_the_worker_group_up_to_the_partition_count(parser):
    cm = configmap()
    scaled = k8s_kind("ScaledObject")
    spec = scaled["spec"]
    worker = k8s_kind("Deployment", "recommender-worker")
    assert spec["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert spec["maxReplicaCount"] == partitions(parser)
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["consumerGroup"] == cm["WORKER_GROUP_ID"] == "recommender-workers"
    assert meta["topic"] == cm["WORKER_EVENTS_TOPIC"] == "browsing-events"
    assert meta["bootstrapServers"] == cm["KAFKA_BOOTSTRAP_SERVERS"]
    assert int(meta["lagThreshold"]) > 0
    assert meta.get("allowIdleConsumers", "false") == "false"
    # Set deliberately (deploy/README.md, "Scaling"): a stuck partition adds no replica, and
    # replica counts divide the partition count.
    assert meta["excludePersistentLag"] == "true"
    assert meta["ensureEvenDistributionOfPartitions"] == "true"
    auth = k8s_kind("TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    secret = k8s_kind("Secret")
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"]


def test_worker_deployment_leaves_replicas_to_keda():
    assert "replicas" not in k8s_kind("Deployment", "recommender-worker")["spec"]


def test_compose_worker_replicas_fit_the_partitions(parser):
    worker = compose()["services"]["worker"]
    env = worker["environment"]
    assert int(env["WORKER_TOPIC_PARTITIONS"]) == partitions(parser)
    assert 1 <= worker["deploy"]["replicas"] <= partitions(parser)


def shutdown_timeout_s(parser) -> float:
    configured = configmap().get("WORKER_SHUTDOWN_TIMEOUT_S")
    return float(configured) if configured else parser.parse_args(["run"]).shutdown_timeout_s


def test_grace_period_exceeds_the_shutdown_timeout(parser):
    timeout = shutdown_timeout_s(parser)
    assert timeout == parser.parse_args(["run"]).shutdown_timeout_s == 30
    worker = k8s_kind("Deployment", "recommender-worker")["spec"]["template"]["spec"]
    assert worker["terminationGracePeriodSeconds"] > timeout
    grace = compose()["services"]["worker"]["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) > timeout
    env = compose()["services"]["worker"]["environment"]
    assert float(env["WORKER_SHUTDOWN_TIMEOUT_S"]) == timeout


# -- health and metrics --------------------------------------------------------------------------


def served_paths() -> set[str]:
    import inspect

    return set(re.findall(r'"(/[a-z]+)"', inspect.getsource(health.serve_http)))


@pytest.mark.parametrize(
    ("deployment", "command", "port_var"),
    [
        ("recommender-worker", "run", "WORKER_METRICS_PORT"),
        ("recommender-monitor", "monitor", "WORKER_MONITOR_METRICS_PORT"),
    ],
)
def test_probes_and_scrape_annotations_match_the_http_server(parser, deployment, command, port_var):
    assert served_paths() == {"/metrics", "/healthz", "/readyz"}
    default_port = parser.parse_args([command]).metrics_port
    assert int(configmap()[port_var]) == default_port
    pod = k8s_kind("Deployment", deployment)["spec"]["template"]
    (main,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports["metrics"] == default_port
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert main["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        port = main[probe]["httpGet"]["port"]
        assert port in (default_port, "metrics")
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == default_port
    assert annotations["prometheus.io/path"] == "/metrics"


def test_compose_healthchecks_and_dockerfile_use_the_served_ports(parser):
    services = compose()["services"]
    run_port = parser.parse_args(["run"]).metrics_port
    monitor_port = parser.parse_args(["monitor"]).metrics_port
    for service, port in (("worker", run_port), ("monitor", monitor_port)):
        assert f"127.0.0.1:{port}/healthz" in " ".join(services[service]["healthcheck"]["test"])
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    assert f"EXPOSE {run_port}" in dockerfile
    assert "/healthz" in dockerfile and "HEALTHCHECK" in dockerfile
    assert "COPY schemas/ schemas/" in dockerfile  # built into the wheel as package data


def exported_metric_names() -> set[str]:
    names = set()
    for registry in (metrics.WorkerMetrics().registry, metrics.MonitorMetrics().registry):
        for family in registry.collect():
            names.add(family.name)
            if family.type == "counter":
                names |= {family.name + "_total", family.name + "_created"}
            elif family.type == "histogram":
                names |= {family.name + s for s in ("_bucket", "_sum", "_count", "_created")}
            else:
                names.add(family.name)
    return names


def test_alerts_and_readme_use_exported_metric_names():
    exported = exported_metric_names()
    rules = k8s_kind("PrometheusRule")
    exprs = " ".join(r["expr"] for g in rules["spec"]["groups"] for r in g["rules"])
    used = set(re.findall(r"\b(?:worker|monitor)_[a-z_]+[a-z]\b", exprs))
    for required in (
        "worker_consumer_lag_messages",
        "worker_dead_letters_total",
        "worker_event_to_suggestion_seconds_bucket",
        "monitor_hit_rate_at_k",
        "monitor_baseline_hit_rate_at_k",
    ):
        assert required in used
    assert used <= exported, f"alerts use metrics the code does not export: {used - exported}"
    # The metric tables of the README: rows starting with a metric name.
    in_readme = set(
        re.findall(
            r"^\| `((?:worker|monitor)_[a-z_]+[a-z])",
            README.read_text(encoding="utf-8"),
            flags=re.MULTILINE,
        )
    )
    assert len(in_readme) >= 20
    unknown = in_readme - exported
    assert not unknown, f"README names metrics the code does not export: {unknown}"


# -- the image's dependency set: lock files, Dockerfile, the product's wheel ----------------------

REQUIREMENTS = ROOT / "requirements"
RUNTIME_LOCK = REQUIREMENTS / "runtime.txt"
DEV_LOCK = REQUIREMENTS / "dev.txt"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)\s*(.*)$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(path: Path) -> dict[str, str]:
    """``name -> version`` of a pip-compile lock; every entry must be ``==`` with hashes."""
    pins: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"{path.name}: not an exact pin: {line[:80]}"
        assert "--hash=sha256:" in match[3], f"{path.name}: {match[1]} has no hash"
        pins[canonical(match[1])] = match[2]
    return pins


def pyproject_requirements() -> dict[str, list[Requirement]]:
    """Requirements by where they are declared: the product's dependencies and extras,
    devtools' dependencies (without the product itself) and both build backends."""
    product = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    devtools = tomllib.loads((ROOT / "devtools/pyproject.toml").read_text(encoding="utf-8"))
    extras = product["project"]["optional-dependencies"]
    return {
        "dependencies": [Requirement(r) for r in product["project"]["dependencies"]],
        "fast": [Requirement(r) for r in extras["fast"]],
        "dev": [Requirement(r) for r in extras["dev"]],
        "devtools": [
            Requirement(r)
            for r in devtools["project"]["dependencies"]
            if canonical(Requirement(r).name) != "worker"
        ],
        "build": [
            Requirement(r)
            for project in (product, devtools)
            for r in project["build-system"]["requires"]
        ],
    }


@pytest.mark.parametrize(
    ("lock", "sections"),
    [
        (RUNTIME_LOCK, ("dependencies", "fast")),
        (DEV_LOCK, ("dependencies", "fast", "dev", "devtools", "build")),
    ],
)
def test_lock_pins_every_declared_dependency_within_its_bounds(lock, sections):
    pins = locked(lock)
    declared = pyproject_requirements()
    for section in sections:
        for requirement in declared[section]:
            name = canonical(requirement.name)
            assert name in pins, f"{lock.name} lacks {requirement} ({section}): run `make lock`"
            assert requirement.specifier.contains(pins[name], prereleases=True), (
                f"{lock.name} pins {name}=={pins[name]}, outside {requirement} ({section})"
            )
    # This checkout's own packages are installed from it (`--no-deps`), never from an index.
    assert not {"worker", "worker-devtools"} & pins.keys()


def test_dev_lock_has_the_runtime_versions():
    runtime, dev = locked(RUNTIME_LOCK), locked(DEV_LOCK)
    assert {name: dev.get(name) for name in runtime} == runtime


def test_dev_in_repeats_devtools_dependencies_exactly():
    lines = (REQUIREMENTS / "dev.in").read_text(encoding="utf-8").splitlines()
    listed = {
        canonical(Requirement(line).name): str(Requirement(line).specifier)
        for line in (raw.split("#", 1)[0].strip() for raw in lines)
        if line and not line.startswith("-")
    }
    for requirement in pyproject_requirements()["devtools"]:
        assert listed.get(canonical(requirement.name)) == str(requirement.specifier), (
            f"requirements/dev.in must list {requirement} as devtools/pyproject.toml does"
        )
    assert "-c runtime.txt" in lines


def dockerfile_instructions(stage: str) -> list[str]:
    """Instructions of one stage of the Dockerfile, continuation lines joined."""
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    instructions = [
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]
    starts = [i for i, line in enumerate(instructions) if line.upper().startswith("FROM ")]
    for begin, end in zip(starts, [*starts[1:], len(instructions)], strict=True):
        if instructions[begin].split()[-1] == stage:
            return instructions[begin:end]
    raise AssertionError(f"no stage {stage} in {DOCKERFILE}")


def test_dockerfile_installs_the_lock_then_the_product_without_dependencies():
    runs = [i[4:] for i in dockerfile_instructions("build") if i.startswith("RUN ")]
    pip_installs = [
        shlex.split(command)
        for run in runs
        for command in run.split("&&")
        if command.split()[:2] == ["pip", "install"]
    ]
    assert pip_installs == [
        ["pip", "install", "--require-hashes", "-r", "requirements/runtime.txt"],
        ["pip", "install", "--no-deps", "."],
    ]
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "==" not in " ".join(runs), "versions belong in requirements/runtime.txt"
    assert "devtools" not in text.lower(), "the image never holds the development tooling"


def test_product_wheel_holds_the_product_and_its_schemas_only(tmp_path):
    """The wheel the image installs, built from exactly what the Dockerfile copies."""
    context = tmp_path / "src"
    for instruction in dockerfile_instructions("build"):
        if not instruction.startswith("COPY ") or "--from" in instruction:
            continue
        *sources, destination = shlex.split(instruction)[1:]
        for pattern in sources:
            for source in sorted(ROOT.glob(pattern.rstrip("/"))):
                target = context / destination
                if source.is_dir():
                    shutil.copytree(
                        source, target, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
                    )
                else:
                    if destination.endswith("/"):
                        target = target / source.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, target)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
        + ["--no-index", str(context), "--wheel-dir", str(tmp_path / "dist")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = (tmp_path / "dist").glob("worker-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    files = [n for n in names if ".dist-info/" not in n]
    modules = {n for n in files if n.endswith(".py")}
    schemas = {n for n in files if n.endswith(".avsc")}
    assert all(n.startswith("worker/") for n in files), files
    assert set(files) == modules | schemas, set(files) - modules - schemas
    in_tree = {p.relative_to(ROOT).as_posix() for p in (ROOT / "worker").rglob("*.py")}
    assert modules == in_tree, "every module of worker/ and nothing else"
    avsc = {f"worker/wire/schemas/{p.name}" for p in (ROOT / "schemas").glob("*.avsc")}
    history = {
        f"worker/wire/schemas/{p.relative_to(ROOT / 'schemas').as_posix()}"
        for p in (ROOT / "schemas" / "history").glob("*/v*.avsc")
    }
    assert len(avsc) == 4 and len(history) >= 4, (avsc, history)
    assert schemas == avsc | history, "the current schemas and every released version"
    assert not [n for n in names if re.search(r"devtools|tests|bench", n)]
    assert "worker = worker.cli:main" in scripts and "worker-dev" not in scripts
