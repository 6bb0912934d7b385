"""The alerts of deploy/k8s/prometheus-rules.yaml under promtool: the rule file checks, every
alert fires in a unit test of deploy/k8s/tests/prometheus-rules.test.yaml and stays silent in
another, and every alert links a section of deploy/RUNBOOK.md.

promtool is required, never skipped: `apt-get install prometheus` (Debian's package ships it;
.ci/run installs it).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
RULES_CR = K8S / "prometheus-rules.yaml"
RULE_TESTS = K8S / "tests" / "prometheus-rules.test.yaml"
EXTRACTOR = K8S / "tests" / "extract_rules.py"
RUNBOOK = ROOT / "deploy" / "RUNBOOK.md"
DEPLOY_README = ROOT / "deploy" / "README.md"
RUNBOOK_PREFIX = "deploy/RUNBOOK.md#"


def extractor() -> ModuleType:
    spec = importlib.util.spec_from_file_location("extract_rules", EXTRACTOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found on PATH: the alert rules cannot be checked. Install it with "
            "`apt-get install -y --no-install-recommends prometheus` (Debian/Ubuntu; .ci/run "
            "does this), or put a Prometheus release's promtool on PATH."
        )
    return path


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)


def rules() -> list[dict[str, Any]]:
    groups = extractor().plain_rules()["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alert_names() -> list[str]:
    return [rule["alert"] for rule in rules() if "alert" in rule]


def rule_tests() -> list[dict[str, Any]]:
    tests: list[dict[str, Any]] = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
    return tests


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, blanks `-`."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def runbook_anchors() -> set[str]:
    headings = re.findall(r"^#{1,6} (.+)$", RUNBOOK.read_text(encoding="utf-8"), re.MULTILINE)
    return {github_anchor(h) for h in headings}


# -- promtool --------------------------------------------------------------------------------


def test_promtool_checks_the_rules(tmp_path: Path) -> None:
    tool = promtool()
    rules_file = tmp_path / "recommender.rules.yml"
    assert extractor().main(["--out", str(rules_file)]) == 0
    result = run([tool, "check", "rules", str(rules_file)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass(tmp_path: Path) -> None:
    tool = promtool()
    (rule_file,) = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["rule_files"]
    assert extractor().main(["--no-descriptions", "--out", str(tmp_path / rule_file)]) == 0
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = run([tool, "test", "rules", str(tmp_path / RULE_TESTS.name)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """The harness is not vacuous: a rule that never fires fails the unit tests."""
    tool = promtool()
    (rule_file,) = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["rule_files"]
    broken = extractor().plain_rules(descriptions=False)
    for group in broken["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "RecommenderWorkersDown":
                rule["expr"] = "vector(1) == 0"
    (tmp_path / rule_file).write_text(yaml.safe_dump(broken, sort_keys=False), encoding="utf-8")
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = run([tool, "test", "rules", str(tmp_path / RULE_TESTS.name)])
    assert result.returncode != 0
    assert "RecommenderWorkersDown" in result.stdout + result.stderr


# -- coverage of the unit tests ---------------------------------------------------------------


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    fired: set[str] = set()
    silent: set[str] = set()
    for case in rule_tests():
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    names = set(alert_names())
    assert names - fired == set(), f"alerts no test fires: {sorted(names - fired)}"
    assert names - silent == set(), f"alerts never tested silent: {sorted(names - silent)}"
    assert fired | silent <= names, f"tests of unknown alerts: {(fired | silent) - names}"


def test_the_outage_cases_are_there() -> None:
    """The silences this rule set exists for: every worker down or gone, the monitor silent."""
    by_name = {case["name"]: case for case in rule_tests()}
    for name, alert in (
        ("every worker down (targets still scraped, up == 0)", "RecommenderWorkersDown"),
        ("every worker gone (no target at all, e.g. deployment deleted)", "RecommenderWorkersDown"),
        ("monitor silent while workers answer", "RecommenderMonitorSilent"),
        ("monitor gone while workers answer", "RecommenderMonitorSilent"),
    ):
        checks = by_name[name]["alert_rule_test"]
        assert any(c["alertname"] == alert and c.get("exp_alerts") for c in checks), name
    healthy = [c for c in rule_tests() if c["name"].startswith("healthy system")]
    assert len(healthy) == 1
    assert {c["alertname"] for c in healthy[0]["alert_rule_test"]} == set(alert_names())
    assert all(c["exp_alerts"] == [] for c in healthy[0]["alert_rule_test"])


# -- runbook and documentation ----------------------------------------------------------------


def test_every_alert_links_its_runbook_section() -> None:
    anchors = runbook_anchors()
    for rule in rules():
        if "alert" not in rule:
            continue
        url = rule["annotations"].get("runbook_url", "")
        assert url == RUNBOOK_PREFIX + rule["alert"].lower(), f"{rule['alert']}: {url!r}"
        anchor = url.removeprefix(RUNBOOK_PREFIX)
        assert anchor in anchors, f"{rule['alert']}: deploy/RUNBOOK.md has no section #{anchor}"
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"].get("summary")


def test_runbook_sections_say_what_to_check() -> None:
    text = RUNBOOK.read_text(encoding="utf-8")
    sections = re.split(r"^## ", text, flags=re.MULTILINE)[1:]
    by_title = {s.split("\n", 1)[0].strip(): s for s in sections}
    for alert in alert_names():
        assert alert in by_title, f"deploy/RUNBOOK.md has no `## {alert}` section"
        body = by_title[alert]
        for part in ("Symptom", "Likely causes", "Check", "Fix"):
            assert f"**{part}**" in body, f"{alert}: the runbook section lacks **{part}**"
        assert "kubectl" in body or "curl" in body, f"{alert}: no command to check"


def test_deploy_readme_lists_every_alert() -> None:
    text = DEPLOY_README.read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `(Recommender[A-Za-z0-9]+)`", text, re.MULTILINE))
    assert listed == set(alert_names())
