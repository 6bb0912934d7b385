"""The Grafana dashboard deploy/k8s/components/grafana-dashboard/recommender-dashboard.json: a
dashboard model laid out on Grafana's 24-column grid without overlaps, every panel on the
`${datasource}` variable, every metric name of every query exported by worker/ops/metrics.py (a
misspelt or removed metric fails here), a panel for each topic operations needs, and every query
accepted by promtool. The component beside it ships the file as a sidecar-labelled ConfigMap.

Pure: no broker, no kubectl. promtool is required, never skipped: `apt-get install prometheus`
(Debian's package ships it; .ci/run installs it).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.ops import metrics

ROOT = Path(__file__).resolve().parents[2]
COMPONENT = ROOT / "deploy" / "k8s" / "components" / "grafana-dashboard"
DASHBOARD = COMPONENT / "recommender-dashboard.json"
GRID_COLUMNS = 24
DATASOURCE = "${datasource}"
ROWS = ("Throughput", "Latency", "Quality", "State", "Health")

#: Metric that shows each topic; a topic is covered when some panel's query uses its metric.
REQUIRED_METRICS = {
    "events consumed": "worker_events_consumed_total",
    "suggestions produced": "worker_suggestions_produced_total",
    "batch size": "worker_batch_size_events_bucket",
    "stage timings": "worker_stage_seconds_bucket",
    "event-to-suggestion latency": "worker_event_to_suggestion_seconds_bucket",
    "consumer lag, self-reported": "worker_consumer_lag_messages",
    "consumer lag per partition, at the broker": "monitor_worker_group_lag",
    "dead letters": "worker_dead_letters_total",
    "hit rate": "monitor_hit_rate_at_k",
    "baseline hit rate": "monitor_baseline_hit_rate_at_k",
    "hit rate per model version": "monitor_version_hit_rate_at_k",
    "served model versions": "worker_model_info",
    "input drift": "worker_input_drift_psi",
    "sessions": "worker_active_sessions",
    "resident memory": "process_resident_memory_bytes",
    "assigned partitions": "worker_assigned_partitions",
    "restoring partitions": "worker_restoring_partitions",
    "fetch stalls": "worker_fetch_stalled_partitions",
    "outputs stuck": "worker_outputs_stuck",
}

#: Values for Grafana's built-in variables when a query is checked outside Grafana.
GRAFANA_GLOBALS = {
    "__interval": "30s",
    "__interval_ms": "30000",
    "__rate_interval": "1m",
    "__range": "6h",
    "__range_s": "21600",
    "__range_ms": "21600000",
}
#: `$name`, `${name}`, `${name:format}` and the deprecated `[[name]]`.
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.+?)\s*,\s*\w+\s*\)\s*$", re.DOTALL)

# -- a small PromQL reader: the metric names of an expression ---------------------------------

TOKEN = re.compile(
    r"""(?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
      |(?P<number>\.?[0-9][0-9a-zA-Z_.]*)
      |(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)
      |(?P<open>[({\[])
      |(?P<close>[)}\]])
      |(?P<space>\s+)
      |(?P<other>.)""",
    re.VERBOSE,
)
#: Words that open a list of label names: `by (...)`, `on (...)`, ...
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}  # fmt: skip
OPERATORS = {"and", "or", "unless", "offset", "bool", "atan2", "inf", "nan"}
KEYWORDS = LABEL_LISTS | AGGREGATIONS | OPERATORS


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects. A name followed by `(` is a function or an
    aggregation; names inside `{...}` (matchers), `[...]` (ranges) and label lists are labels or
    durations; keywords (case-insensitive, as in PromQL) are operators."""
    assert "__name__" not in expr, f"name metrics plainly, not by __name__ matchers: {expr}"
    tokens = [(m.lastgroup, m.group()) for m in TOKEN.finditer(expr) if m.lastgroup != "space"]
    names: set[str] = set()
    stack: list[str] = []  # "(" of an expression, "labels" of a label list, "{" or "["
    for i, (kind, text) in enumerate(tokens):
        if kind == "open":
            previous = tokens[i - 1][1].lower() if i else ""
            stack.append("labels" if text == "(" and previous in LABEL_LISTS else text)
        elif kind == "close":
            assert stack, f"unbalanced {text!r} in {expr}"
            stack.pop()
        elif kind == "name" and (not stack or stack[-1] == "("):
            following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
            if following != "(" and text.lower() not in KEYWORDS:
                names.add(text)
    assert not stack, f"unclosed {stack[-1]!r} in {expr}"
    return names


# -- the dashboard ------------------------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return board


def all_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows included; a collapsed row holds its panels in its own `panels`."""
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []) if panel.get("type") == "row" else [])
    return found


def graph_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in all_panels(board) if p.get("type") != "row"]


def concrete(board: dict[str, Any], expr: str) -> str:
    """The expression with Grafana's variables replaced by sample values (a dashboard variable
    by `recommender`, the namespace of the manifests); an undefined variable fails."""
    defined = {v["name"] for v in board["templating"]["list"]}

    def value(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g is not None)
        if name in GRAFANA_GLOBALS:
            return GRAFANA_GLOBALS[name]
        assert name in defined, f"variable ${name} is not defined by the dashboard: {expr}"
        return "recommender"

    return VARIABLE.sub(value, expr)


def queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL with concrete values) of every panel target and every variable query."""
    found = []
    for panel in graph_panels(board):
        for target in panel.get("targets", []):
            where = f"panel-{panel['id']}-{target['refId']}"
            found.append((where, concrete(board, target["expr"])))
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = LABEL_VALUES.match(text)
        assert match, f"variable {variable['name']}: expected label_values(<metric>, <label>)"
        found.append((f"variable-{variable['name']}", concrete(board, match[1])))
    return found


# -- what the code exports ----------------------------------------------------------------------

#: The series names of each metric type (a counter's family name lacks `_total`).
SERIES_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}


def exported_metric_names() -> set[str]:
    """Every series name the worker and the monitor export. A labelled metric with no child yet
    has no samples, so names come from the samples and from each family's type."""
    names: set[str] = set()
    for registry in (metrics.WorkerMetrics().registry, metrics.MonitorMetrics().registry):
        for family in registry.collect():
            names.update(sample.name for sample in family.samples)
            names.update(family.name + s for s in SERIES_SUFFIXES.get(family.type, ("",)))
    return names


def unknown_metric_names(board: dict[str, Any]) -> dict[str, set[str]]:
    exported = exported_metric_names()
    unknown = {where: metric_names(expr) - exported for where, expr in queries(board)}
    return {where: names for where, names in unknown.items() if names}


# -- promtool -----------------------------------------------------------------------------------


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found on PATH: the dashboard's queries cannot be checked. Install it "
            "with `apt-get install -y --no-install-recommends prometheus` (Debian/Ubuntu; "
            ".ci/run does this), or put a Prometheus release's promtool on PATH."
        )
    return path


def check_with_promtool(board: dict[str, Any], directory: Path) -> subprocess.CompletedProcess[str]:
    """`promtool check rules` on one recording-rule file per query, named after the query."""
    files = []
    for where, expr in queries(board):
        path = directory / f"{where}.yml"
        rule = {"record": "dashboard:check", "expr": expr}
        path.write_text(
            yaml.safe_dump({"groups": [{"name": where, "rules": [rule]}]}), encoding="utf-8"
        )
        files.append(str(path))
    return subprocess.run(
        [promtool(), "check", "rules", *files],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


# -- the model ----------------------------------------------------------------------------------


def test_is_a_dashboard_model_with_a_stable_uid() -> None:
    board = load_dashboard()
    assert board["uid"] == "recommender"
    assert board["title"]
    assert board["schemaVersion"] == 39
    assert isinstance(board["panels"], list) and board["panels"]
    ids = [p["id"] for p in all_panels(board)]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids)), f"panel ids repeat: {sorted(ids)}"
    assert [p["title"] for p in all_panels(board) if p["type"] == "row"] == list(ROWS)


def test_variables_pick_a_prometheus_data_source_and_a_namespace() -> None:
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    namespace = variables["namespace"]
    assert namespace["type"] == "query"
    assert namespace["query"].startswith("label_values(")
    assert namespace["query"].replace(" ", "").endswith(",namespace)")


def test_panels_fit_the_grid_without_overlapping() -> None:
    board = load_dashboard()
    boxes = []
    for panel in all_panels(board):
        grid = panel["gridPos"]
        x, y, w, h = (grid[k] for k in ("x", "y", "w", "h"))
        assert all(isinstance(v, int) for v in (x, y, w, h)), panel["title"]
        assert x >= 0 and y >= 0 and w >= 1 and h >= 1, panel["title"]
        assert x + w <= GRID_COLUMNS, f"{panel['title']}: x + w = {x + w} > {GRID_COLUMNS}"
        boxes.append((panel["title"], x, y, w, h))
    for i, (title, x, y, w, h) in enumerate(boxes):
        for other, ox, oy, ow, oh in boxes[i + 1 :]:
            apart = x + w <= ox or ox + ow <= x or y + h <= oy or oy + oh <= y
            assert apart, f"panels overlap: {title!r} and {other!r}"
    # Top-level panels in reading order, so each row heads the panels below it.
    top = [(p["gridPos"]["y"], p["gridPos"]["x"]) for p in board["panels"]]
    assert top == sorted(top)


def test_every_panel_queries_the_datasource_variable() -> None:
    def uid(source: dict[str, str] | str) -> str:
        return source["uid"] if isinstance(source, dict) else source

    for panel in graph_panels(load_dashboard()):
        title = panel["title"]
        assert uid(panel.get("datasource", "")) == DATASOURCE, f"{title}: {panel.get('datasource')}"
        assert panel["targets"], f"{title}: no query"
        for target in panel["targets"]:  # a target may name its own data source, the same one
            assert uid(target.get("datasource", DATASOURCE)) == DATASOURCE, title
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), f"{title}: refIds repeat"
        for target in panel["targets"]:
            assert isinstance(target.get("expr"), str) and target["expr"].strip(), title


# -- metric names -------------------------------------------------------------------------------


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, pod) (rate(a_bucket{namespace=~"x", le!="y"}[5m])))'
        " / on (pod) group_left (stage) b and ignoring (x) c offset 5m > bool 0.5"
        " or sum(d) without (e) or max_over_time(f[10m:1m]) or g{h='i'} OR time() - j"
        " or SUM BY (k) (l)"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c", "d", "f", "g", "j", "l"}


def test_every_metric_name_is_exported_by_the_code() -> None:
    board = load_dashboard()
    assert unknown_metric_names(board) == {}
    used = set().union(*(metric_names(expr) for _, expr in queries(board)))
    assert len(used) >= 20, sorted(used)


def test_a_misspelt_metric_name_is_caught() -> None:
    """The check is not vacuous: one wrong letter in one query fails it."""
    board = copy.deepcopy(load_dashboard())
    panel, target = next(
        (p, t)
        for p in graph_panels(board)
        for t in p["targets"]
        if "worker_events_consumed_total" in t["expr"]
    )
    target["expr"] = target["expr"].replace("worker_events_consumed_total", "worker_events_consumd")
    where = f"panel-{panel['id']}-{target['refId']}"
    assert unknown_metric_names(board) == {where: {"worker_events_consumd"}}


def test_every_topic_has_a_panel() -> None:
    board = load_dashboard()
    used = {
        name
        for panel in graph_panels(board)
        for target in panel["targets"]
        for name in metric_names(concrete(board, target["expr"]))
    }
    missing = {topic: m for topic, m in REQUIRED_METRICS.items() if m not in used}
    assert not missing, f"topics without a panel: {missing}"


def test_latency_panel_shows_p50_p95_p99() -> None:
    board = load_dashboard()
    quantiles = set()
    for _, expr in queries(board):
        if "worker_event_to_suggestion_seconds_bucket" in metric_names(expr):
            match = re.match(r"\s*histogram_quantile\(\s*([0-9.]+)\s*,", expr)
            assert match, expr
            quantiles.add(float(match[1]))
    assert quantiles == {0.5, 0.95, 0.99}


# -- promtool -----------------------------------------------------------------------------------


def test_promtool_parses_every_query(tmp_path: Path) -> None:
    board = load_dashboard()
    result = check_with_promtool(board, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS: 1 rules found") == len(queries(board))


def test_promtool_rejects_a_broken_query(tmp_path: Path) -> None:
    """The promtool check is not vacuous: an unclosed parenthesis fails it."""
    board = copy.deepcopy(load_dashboard())
    panel = graph_panels(board)[0]
    panel["targets"][0]["expr"] = "sum(rate(worker_events_consumed_total[$__rate_interval])"
    result = check_with_promtool(board, tmp_path)
    assert result.returncode != 0
    assert f"panel-{panel['id']}-A.yml" in result.stdout + result.stderr


# -- the kustomize component --------------------------------------------------------------------


def test_component_ships_the_dashboard_for_the_grafana_sidecar() -> None:
    component = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text(encoding="utf-8"))
    assert component["kind"] == "Component"
    (generator,) = component["configMapGenerator"]
    assert generator["files"] == [DASHBOARD.name]
    assert generator["options"]["labels"] == {"grafana_dashboard": "1"}
    assert generator["options"]["disableNameSuffixHash"] is True
