"""deploy/prometheus and deploy/grafana: files parse, promtool passes, names match proxy/metrics.py,
and a real Prometheus scraping a running proxy evaluates every rule and dashboard expression.

promtool and the prometheus server come from `apt-get install prometheus`. Without them the tests
that need them are skipped, unless the environment variable CI is set, where they fail.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from proxy.metrics import Metrics
from tests.conftest import CLIENT_KEY, free_port

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
RULE_FILES = [PROMETHEUS_DIR / "rules" / "perg-recording.yml", PROMETHEUS_DIR / "rules" / "perg-alerts.yml"]
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
DASHBOARD = GRAFANA_DIR / "dashboards" / "perg-proxy.json"

# The core figures: these recording rules and dashboard panels must return data once a proxy
# carrying personalized traffic on the real local model (monitor, shadow and canary on) has been
# scraped. Ratios that need a rarer event (a contradiction, a canary item answered right) may
# stay empty on a 135M model and are only required not to error.
RULES_WITH_DATA = frozenset(
    {
        "perg:monitor_judged:rate_5m",
        "perg:monitor_breakage:ratio_5m",
        "perg:monitor_robustness_error:ratio_5m",
        "perg:monitor_enqueued:rate_5m",
        "perg:monitor_judge_duration_seconds:p50_5m",
        "perg:canary_probes:increase_1h",
        "perg:canary_accuracy_with_preferences:ratio_1h",
        "perg:canary_accuracy_without_preferences:ratio_1h",
        "perg:requests:rate_5m",
        "perg:request_errors:ratio_5m",
        "perg:request_duration_seconds:p50_5m",
        "perg:request_duration_seconds:p99_5m",
        "perg:overhead_seconds:p50_5m",
        "perg:overhead_seconds:p99_5m",
        "perg:time_to_first_token_seconds:p50_5m",
        "perg:time_to_first_token_seconds:p99_5m",
    }
)
PANELS_WITH_DATA = frozenset(
    {
        "Requests per second by route and status",
        "Server error ratio (5xx) by route",
        "Requests in flight",
        "Request latency p50 / p99",
        "Proxy overhead p50 / p99",
        "Time to first token p50 / p99",
        "Upstream call latency by stage",
        "Monitor queue depth",
        "Aligner outcomes per second",
        "Breakage ratio (BR), served vs shadow",
        "Robustness error ratio (RER), served vs shadow",
        "Samples judged and uncomparable per second",
        "Canary accuracy with and without preferences (1h)",
        "Canary items probed and probe failures (1h)",
        "Samples enqueued and dropped per second",
        "Judge latency p50 / p99",
    }
)

# Dashboard template variables, as the test substitutes them ("All" = ".*").
TEMPLATE_VALUES = {"model": ".*", "strategy": ".*", "__range": "1h", "__rate_interval": "1m", "__interval": "15s"}
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        message = f"`{tool}` is not installed (apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(message + "; it is required in CI")
        pytest.skip(message)
    return path


# ------------------------------------------------------------------------------------ contract


def metric_contract() -> dict[str, frozenset[str]]:
    """Every exported series name of `proxy.metrics.Metrics`, with its labels."""
    metrics = Metrics(CollectorRegistry())
    names: dict[str, frozenset[str]] = {}
    for wrapper in vars(metrics).values():
        if not isinstance(wrapper, MetricWrapperBase):
            continue
        labels = frozenset(wrapper._labelnames)
        base = wrapper._name
        if wrapper._type == "counter":
            names[base + "_total"] = labels
        elif wrapper._type == "histogram":
            names[base + "_bucket"] = labels | {"le"}
            names[base + "_sum"] = labels
            names[base + "_count"] = labels
        else:
            names[base] = labels
    return names


CONTRACT = metric_contract()


def test_contract_is_complete():
    # A guard on metric_contract() itself: the DESIGN.md core names are all there.
    for name in (
        "perg_requests_total",
        "perg_request_duration_seconds_bucket",
        "perg_overhead_seconds_count",
        "perg_upstream_duration_seconds_sum",
        "perg_time_to_first_token_seconds_bucket",
        "perg_aligner_outcomes_total",
        "perg_monitor_judged_total",
        "perg_monitor_follow_score_bucket",
        "perg_monitor_queue_depth",
        "perg_monitor_dropped_total",
        "perg_canary_correct_total",
    ):
        assert name in CONTRACT, name
    assert CONTRACT["perg_monitor_broken_total"] == {"model", "strategy", "role", "relevance"}
    assert "le" in CONTRACT["perg_monitor_follow_score_bucket"]


# ------------------------------------------------------------------------------------ PromQL

TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<duration>\d+(?:ms|[smhdwy])(?![A-Za-z0-9_:]))
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){},])
    """,
    re.VERBOSE,
)
AGGREGATIONS = frozenset({"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile"})
KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on", "ignoring", "group_left", "group_right"}
)
LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})


@dataclass
class Selector:
    metric: str | None
    labels: list[str]
    position: int


@dataclass
class Grouping:
    keyword: str
    labels: list[str]
    scope: tuple[int, int]  # token range of the expression the clause applies to


@dataclass
class Parsed:
    expr: str
    selectors: list[Selector] = field(default_factory=list)
    groupings: list[Grouping] = field(default_factory=list)

    @property
    def metrics(self) -> set[str]:
        return {s.metric for s in self.selectors if s.metric}

    def metrics_in(self, scope: tuple[int, int]) -> set[str]:
        return {s.metric for s in self.selectors if s.metric and scope[0] <= s.position <= scope[1]}


def substitute(expr: str) -> str:
    """Grafana template variables and macros as the test evaluates them."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in TEMPLATE_VALUES:
            raise AssertionError(f"unknown template variable ${name} in {expr!r}")
        return TEMPLATE_VALUES[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, expr)


def tokenize(expr: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(expr):
        match = TOKEN.match(expr, position)
        if match is None:
            raise AssertionError(f"cannot tokenize {expr[position : position + 30]!r} in {expr!r}")
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append((kind, match.group()))
        position = match.end()
    return tokens


def matching(tokens: list[tuple[str, str]], start: int, step: int) -> int:
    """Index of the parenthesis matching the one at `start` (step 1 forward, -1 backward)."""
    opening, closing = ("(", ")") if step == 1 else (")", "(")
    depth = 0
    index = start
    while 0 <= index < len(tokens):
        if tokens[index][1] == opening:
            depth += 1
        elif tokens[index][1] == closing:
            depth -= 1
            if depth == 0:
                return index
        index += step
    raise AssertionError("unbalanced parentheses")


def parse(expr: str) -> Parsed:
    """Metric selectors (with their label matchers) and grouping clauses of a PromQL expression.

    Not a full parser: enough to check every name and label against proxy/metrics.py.
    """
    tokens = tokenize(expr)
    parsed = Parsed(expr)
    index = 0
    while index < len(tokens):
        kind, text = tokens[index]
        following = tokens[index + 1][1] if index + 1 < len(tokens) else None
        if text == "{":  # a selector without a metric name
            end, labels = _matchers(tokens, index)
            parsed.selectors.append(Selector(None, labels, index))
            index = end + 1
            continue
        if kind != "ident":
            index += 1
            continue
        lowered = text.lower()
        if lowered in ("group_left", "group_right") and following != "(":
            index += 1  # group_left without extra labels
            continue
        if lowered in LABEL_LIST_KEYWORDS:
            assert following == "(", f"{text} without a label list in {expr!r}"
            close = matching(tokens, index + 1, 1)
            labels = [t for k, t in tokens[index + 2 : close] if k == "ident"]
            scope = (0, len(tokens))
            if lowered in ("by", "without"):
                if index > 0 and tokens[index - 1][1] == ")":  # sum (x) by (l)
                    scope = (matching(tokens, index - 1, -1), index - 1)
                else:  # sum by (l) (x)
                    assert tokens[close + 1][1] == "(", f"aggregation without argument in {expr!r}"
                    scope = (close + 1, matching(tokens, close + 1, 1))
            parsed.groupings.append(Grouping(lowered, labels, scope))
            index = close + 1
            continue
        if lowered in KEYWORDS or following == "(" or (lowered in AGGREGATIONS and following in ("by", "without")):
            # operators, functions, aggregations
            index += 1
            continue
        matchers: list[str] = []
        end = index
        if following == "{":
            end, matchers = _matchers(tokens, index + 1)
        parsed.selectors.append(Selector(text, matchers, index))
        index = end + 1
    return parsed


def _matchers(tokens: list[tuple[str, str]], start: int) -> tuple[int, list[str]]:
    labels = []
    index = start + 1
    while tokens[index][1] != "}":
        kind, text = tokens[index]
        if kind == "ident":
            assert tokens[index + 1][1] in ("=", "!=", "=~", "!~"), f"bad matcher near {text!r}"
            assert tokens[index + 2][0] == "string", f"bad matcher value near {text!r}"
            labels.append(text)
            index += 3
        else:
            assert text == ",", f"unexpected {text!r} in a selector"
            index += 1
    return index, labels


def test_parser_on_known_expressions():
    parsed = parse('histogram_quantile(0.99, sum by (route, le) (rate(perg_request_duration_seconds_bucket{route!~"a|b"}[5m])))')
    assert parsed.metrics == {"perg_request_duration_seconds_bucket"}
    assert parsed.selectors[0].labels == ["route"]
    assert [(g.keyword, g.labels) for g in parsed.groupings] == [("by", ["route", "le"])]
    assert parsed.metrics_in(parsed.groupings[0].scope) == {"perg_request_duration_seconds_bucket"}
    parsed = parse("sum(rate(x_total[1d] offset 5m)) by (a) / on (a) group_left (b) y > 0 and on () z unless w")
    assert parsed.metrics == {"x_total", "y", "z", "w"}
    assert [(g.keyword, g.labels) for g in parsed.groupings] == [("by", ["a"]), ("on", ["a"]), ("group_left", ["b"]), ("on", [])]
    assert parsed.metrics_in(parsed.groupings[0].scope) == {"x_total"}
    assert parse('{__name__=~"perg_.+", model!=""}').selectors[0].labels == ["__name__", "model"]
    assert parse("a * on (x) group_left b").metrics == {"a", "b"}


# ------------------------------------------------------------------------------------ loading


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def rules() -> list[dict[str, Any]]:
    found = []
    for path in RULE_FILES:
        for group in load_yaml(path)["groups"]:
            for rule in group["rules"]:
                found.append({**rule, "group": group["name"], "file": path.name})
    return found


def recording_rules() -> dict[str, str]:
    return {rule["record"]: rule["expr"] for rule in rules() if "record" in rule}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def panel_targets() -> list[tuple[str, str, dict[str, Any]]]:
    """(row title, panel title, target) for every query of the dashboard, in layout order."""
    out = []
    row = ""
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
            continue
        for target in panel["targets"]:
            out.append((row, panel["title"], target))
    return out


def recorded_labels() -> dict[str, frozenset[str]]:
    """The labels each recording rule's series carry, inferred from its expression.

    The first grouping's labels (without `le` under histogram_quantile), or those of the first
    series it reads. Cross-checked against the promtool tests' expected samples below.
    """
    known: dict[str, frozenset[str]] = {}
    for name, expr in recording_rules().items():
        parsed = parse(expr)
        groupings = [g for g in parsed.groupings if g.keyword == "by"]
        if groupings:
            labels = set(groupings[0].labels)
            if expr.lstrip().startswith("histogram_quantile"):
                labels.discard("le")
        else:
            first = next(s.metric for s in parsed.selectors if s.metric)
            labels = set(known.get(first) or CONTRACT[first] | TARGET_LABELS)
        known[name] = frozenset(labels)
    return known


def labels_of(name: str, recorded: dict[str, frozenset[str]]) -> frozenset[str]:
    if name in recorded:
        return recorded[name]
    return CONTRACT[name] | TARGET_LABELS


# ------------------------------------------------------------------------------------ (a) files


def test_every_deploy_file_parses():
    files = sorted(p for d in (PROMETHEUS_DIR, GRAFANA_DIR) for p in d.rglob("*") if p.is_file())
    assert {p.suffix for p in files} <= {".yml", ".json"}, files
    for path in files:
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        else:
            assert load_yaml(path), path
    assert len(RULE_TESTS) >= 2
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    assert [(PROMETHEUS_DIR / f).resolve() for f in config["rule_files"]] == [p.resolve() for p in RULE_FILES]
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"


def test_recording_rule_names_follow_the_convention():
    for name in recording_rules():
        assert re.fullmatch(r"perg:[a-z0-9_]+:[a-z0-9]+_(5m|1h|1d)", name), name
    alerts = [rule for rule in rules() if "alert" in rule]
    assert {rule["alert"] for rule in alerts} == {
        "PergBreakageRatioHigh",
        "PergJudgeFailureRatioHigh",
        "PergFollowVerdictsMissing",
        "PergMonitorDroppingSamples",
        "PergMonitorNoSamplesJudged",
        "PergGateFailingOpen",
        "PergMonitorQueueLagHigh",
        "PergMonitorJobsDeadLettered",
        "PergMonitorJobsLost",
    }
    for rule in alerts:
        assert rule["for"] and rule["labels"]["severity"] and rule["annotations"]["summary"], rule["alert"]
    assert {r["alert"]: r["for"] for r in alerts}["PergBreakageRatioHigh"] == "15m"
    assert {r["alert"]: r["for"] for r in alerts}["PergMonitorNoSamplesJudged"] == "30m"


def test_dashboard_structure():
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    assert board["uid"] == "perg-proxy"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("model", "strategy"):
        assert variables[name]["type"] == "query" and variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    titles = [p["title"] for p in panels()]
    assert len(titles) == len(set(titles))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}" and target["expr"].strip(), panel["title"]
    # The panels the issue asks for.
    expected = PANELS_WITH_DATA | {
        "Aligner outcomes per second",
        "Breakage ratio (BR), served vs shadow",
        "Alignment failure ratio (AFR), served vs shadow",
        "Robustness error ratio (RER), served vs shadow",
        "Follow-score distribution (Likert 1-5, relevant preferences)",
        "Canary accuracy with and without preferences (1h)",
        "Canary performance variation (PVR, 1h)",
        "Samples enqueued and dropped per second",
        "Judge failures per second and failure ratio",
        "Judge latency p50 / p99",
    }
    assert expected <= set(titles), expected - set(titles)


def test_grafana_provisioning():
    (source,) = load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")
    (provider,) = load_yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "perg.yml")["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


# ------------------------------------------------------------------------------------ (b) promtool


def test_promtool_check_config_and_rules():
    promtool = require("promtool")
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    result = subprocess.run([promtool, "check", "rules", *map(str, RULE_FILES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(recording_rules())} rules found" in result.stdout + result.stderr


def test_promtool_test_rules():
    promtool = require("promtool")
    result = subprocess.run([promtool, "test", "rules", *map(str, RULE_TESTS)], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout + result.stderr


def test_rule_tests_cover_every_rule():
    """Every recording rule has expected samples, with the labels it really carries; every alert is
    tested both firing and not firing."""
    expected_labels: dict[str, set[frozenset[str]]] = {}
    firing: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        for test in load_yaml(path)["tests"]:
            for case in test.get("promql_expr_test", []):
                for sample in case["exp_samples"]:
                    parsed = parse(sample["labels"])
                    (selector,) = parsed.selectors
                    assert selector.metric == case["expr"], sample
                    expected_labels.setdefault(case["expr"], set()).add(frozenset(selector.labels))
            for case in test.get("alert_rule_test", []):
                (firing if case["exp_alerts"] else silent).add(case["alertname"])
    recorded = recorded_labels()
    assert set(recorded) == set(expected_labels), set(recorded) ^ set(expected_labels)
    for name, label_sets in expected_labels.items():
        assert label_sets == {recorded[name]}, (name, label_sets, recorded[name])
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert firing == alerts and silent == alerts


# ------------------------------------------------------------------------------------ (c) names


def check_expression(where: str, expr: str, recorded: dict[str, frozenset[str]]) -> None:
    parsed = parse(expr)
    assert parsed.metrics, f"{where}: no metric in {expr!r}"
    for selector in parsed.selectors:
        if selector.metric is None:
            continue
        assert selector.metric in CONTRACT or selector.metric in recorded, f"{where}: unknown metric {selector.metric}"
        missing = set(selector.labels) - labels_of(selector.metric, recorded)
        assert not missing, f"{where}: {selector.metric} has no label {missing}"
    everything = set().union(*(labels_of(m, recorded) for m in parsed.metrics))
    for grouping in parsed.groupings:
        if grouping.keyword in ("by", "without"):
            for metric in parsed.metrics_in(grouping.scope):
                missing = set(grouping.labels) - labels_of(metric, recorded)
                assert not missing, f"{where}: `{grouping.keyword}` uses {missing}, which {metric} lacks"
        else:
            missing = set(grouping.labels) - everything
            assert not missing, f"{where}: `{grouping.keyword}` uses {missing}, on none of {parsed.metrics}"


def test_rule_expressions_use_only_contract_names_and_labels():
    recorded = recorded_labels()
    defined: set[str] = set()
    for rule in rules():
        name = rule.get("record") or rule["alert"]
        check_expression(name, rule["expr"], recorded)
        # A rule reads only recording rules defined before it (in its group or an earlier one), so
        # a single evaluation round sees fresh inputs.
        for metric in parse(rule["expr"]).metrics:
            assert metric in CONTRACT or metric in defined, f"{name} reads {metric} before it is recorded"
        defined.add(name)
    for name in recorded:
        assert name.startswith("perg:") and name not in CONTRACT


def test_dashboard_expressions_use_only_contract_names_and_labels():
    recorded = recorded_labels()
    used_recorded: set[str] = set()
    for _row, title, target in panel_targets():
        expr = substitute(target["expr"])
        check_expression(title, expr, recorded)
        parsed = parse(expr)
        used_recorded |= parsed.metrics & set(recorded)
        # Legend labels are labels the query's result carries.
        outer = {label for g in parsed.groupings if g.keyword == "by" for label in g.labels}
        available = outer or set().union(*(labels_of(m, recorded) for m in parsed.metrics))
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")):
            assert label in available, f"{title}: legend label {label} not in {available}"
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        selector, label = label_values_query(variable["definition"])
        assert any(label in labels for name, labels in CONTRACT.items() if re.fullmatch("perg_.+", name)), variable["name"]
        assert parse(selector).selectors
    # The dashboard reads the ratio rules it exists to show.
    assert {"perg:monitor_broken:rate_5m", "perg:canary_performance_variation:ratio_1h", "perg:requests:rate_5m"} <= used_recorded


def label_values_query(definition: str) -> tuple[str, str]:
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", definition.strip())
    assert match, definition
    return match.group(1), match.group(2)


def test_name_check_rejects_unknown_names_and_labels():
    recorded = recorded_labels()
    with pytest.raises(AssertionError, match="unknown metric"):
        check_expression("t", "rate(perg_request_total[5m])", recorded)
    with pytest.raises(AssertionError, match="no label"):
        check_expression("t", 'perg_requests_total{model="x"}', recorded)
    with pytest.raises(AssertionError, match="lacks"):
        check_expression("t", "sum by (model) (rate(perg_requests_total[5m]))", recorded)
    with pytest.raises(AssertionError, match="lacks"):
        check_expression("t", "sum by (relevance) (perg:monitor_judged:rate_5m)", recorded)


# ------------------------------------------------------------------------------------ (d) live


class Prometheus:
    """A real Prometheus server on 127.0.0.1, its own data directory, stopped by its PID."""

    def __init__(self, binary: str, directory: Path, target: str) -> None:
        self.directory = directory
        self.config = directory / "prometheus.yml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(path) for path in RULE_FILES],
                    "scrape_configs": [{"job_name": "perg-proxy", "metrics_path": "/metrics", "static_configs": [{"targets": [target]}]}],
                }
            )
        )
        self.binary = binary
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "prometheus.log"
        self.url = ""

    def start(self, ready_timeout: float = 60) -> None:
        for _attempt in range(3):  # the free port may be taken between probe and bind
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            with self.log_path.open("wb") as log:
                self.process = subprocess.Popen(
                    [
                        self.binary,
                        f"--config.file={self.config}",
                        f"--storage.tsdb.path={self.directory / 'data'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                        "--log.level=warn",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            deadline = time.monotonic() + ready_timeout
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    if httpx2.get(self.url + "/-/ready", timeout=1).status_code == 200:
                        return
                except httpx2.TransportError:
                    pass
                time.sleep(0.1)
            self.stop()
        raise AssertionError("prometheus did not become ready:\n" + self.log_path.read_text(errors="replace")[-3000:])

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()  # SIGTERM to this PID
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(15)

    def api(self, path: str, **params: Any) -> Any:
        response = httpx2.get(self.url + "/api/v1/" + path, params=params, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (path, params, response.status_code, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] in ("vector", "scalar"), data
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def wait_for(self, expr: str, timeout: float = 45) -> list[dict[str, Any]]:
        """Poll an expression until it returns a finite value (bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if any(math.isfinite(float(s["value"][1])) for s in result):
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"{expr} returned no finite value within {timeout}s: {result}")
            time.sleep(0.25)


MODEL = "smollm2-135m-instruct"
STYLE = "Answer in one short sentence, like a pirate."
UNRELATED = "I have a dog named Max."


@pytest.fixture
def live_proxy(start_proxy, local_model, fake_upstream, tmp_path: Path):
    """A proxy on the real local model (answers, gate, aligner, judges, canary), with the fake
    upstream behind `error-*` / `echo` for an upstream 5xx and pass-through routes."""
    return start_proxy(
        upstreams=[
            {"name": "local", "base_url": local_model.base_url, "structured_output": "json_object_schema"},
            {"name": "fake", "base_url": fake_upstream.url, "models": ["echo", "error-*"]},
        ],
        personalization={"default_strategy": "pref_aligner"},
        profiles={"backend": "sqlite", "path": str(tmp_path / "profiles.db")},
        monitor={
            "enabled": True, "sample_rate": 1.0, "shadow_rate": 1.0, "workers": 2, "store_samples": True,
            "filters": {"models": [MODEL]},
            "canary": {"enabled": True, "interval_seconds": 1, "items_per_run": 2, "model": MODEL, "settings": ["relevant", "mixed"]},
        },
    )  # fmt: skip


@pytest.fixture
def prometheus(live_proxy, tmp_path: Path) -> Iterator[Prometheus]:
    server = Prometheus(require("prometheus"), tmp_path, live_proxy.url.removeprefix("http://"))
    try:
        server.start()
        yield server
    finally:
        server.stop()
    assert server.process is None


def send_traffic(proxy) -> None:
    """Personalized chat on the local model (plain and streaming, relevant and unrelated
    preferences, both strategies), an upstream 5xx, models and a pass-through route."""
    options = {"max_tokens": 40, "temperature": 0, "seed": 1}
    with openai.OpenAI(base_url=proxy.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=120) as client:
        for index, (strategy, preferences) in enumerate([("pref_aligner", [STYLE]), ("naive", [STYLE]), ("pref_aligner", [UNRELATED])]):
            extension = {"personalization": {"preferences": preferences, "strategy": strategy}}
            question = [{"role": "user", "content": f"Name the capital of country number {index + 1} in Europe."}]
            assert (
                client.chat.completions.create(model=MODEL, messages=question, extra_body=extension, **options).choices[0].message.content
            )
            stream = client.chat.completions.create(model=MODEL, messages=question, stream=True, extra_body=extension, **options)
            with stream:
                assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        with pytest.raises(openai.APIStatusError) as error:
            client.chat.completions.create(model="error-503", messages=[{"role": "user", "content": "fail"}])
        assert error.value.status_code == 503
        assert client.models.list().data
        assert client.embeddings.create(model="echo", input="hi").data


def format_result(result: list[dict[str, Any]]) -> list[str]:
    lines = []
    for sample in sorted(result, key=lambda s: sorted(s["metric"].items())):
        labels = ", ".join(f'{k}="{v}"' for k, v in sorted(sample["metric"].items()) if k != "__name__")
        value = float(sample["value"][1])
        lines.append(f"{{{labels}}} = {value:.6g}")
    return lines or ["(no data)"]


def has_data(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(sample["value"][1])) for sample in result)


@pytest.mark.local_model
@pytest.mark.timeout(900)  # about 2 minutes on a quiet machine; the one-request model queues the judges' calls
def test_live_prometheus_evaluates_every_rule_and_panel(live_proxy, prometheus):
    proxy = live_proxy
    send_traffic(proxy)
    # The series exist after one scrape; a second batch after that makes every rate() positive.
    prometheus.wait_for('perg_requests_total{route="chat_completions"}')
    send_traffic(proxy)
    prometheus.wait_for('perg:request_duration_seconds:p99_5m{route="chat_completions"}')
    prometheus.wait_for("perg:time_to_first_token_seconds:p50_5m > 0")
    prometheus.wait_for('perg:overhead_seconds:p99_5m{route="chat_completions"}')
    # The monitor judges in the background (the 135M model as judge, one call at a time).
    for expr in (
        "perg:monitor_judged:rate_5m",
        'perg:monitor_judged:rate_5m{role="shadow"}',
        "perg:monitor_breakage:ratio_5m",
        "perg:canary_accuracy_without_preferences:ratio_1h",
    ):
        prometheus.wait_for(expr, timeout=240)

    (target,) = prometheus.api("targets")["activeTargets"]
    assert target["health"] == "up", target
    # Every rule group loaded and evaluated without an error.
    groups = prometheus.api("rules")["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    assert loaded == {rule.get("record") or rule["alert"] for rule in rules()}
    for group in groups:
        for rule in group["rules"]:
            assert rule["health"] == "ok" and not rule.get("lastError"), rule
    assert not [a for a in prometheus.api("alerts")["alerts"] if a["state"] == "firing"]

    inferred = recorded_labels()
    missing: list[str] = []
    print("\n=== recording rules and alerts (evaluated by Prometheus) ===")
    for rule in rules():
        name = rule.get("record") or rule["alert"]
        result = prometheus.query(rule["expr"])
        if name in RULES_WITH_DATA and not has_data(result):
            missing.append(f"rule {name}")
        if rule.get("record"):  # the stored series carry exactly the labels the unit tests infer
            for sample in prometheus.query(name):
                assert sample["metric"].pop("__name__") == name
                assert set(sample["metric"]) == inferred[name], (name, sample["metric"])
        print(f"{name}:")
        for line in format_result(result):
            print(f"    {line}")

    print("\n=== dashboard panels ===")
    seen_titles: set[str] = set()
    panels_with_data: set[str] = set()
    current = None
    for row, title, target in panel_targets():
        if row != current:
            print(f"[{row}]")
            current = row
        expr = substitute(target["expr"])
        result = prometheus.query(expr)
        if has_data(result):
            panels_with_data.add(title)
        if title not in seen_titles:
            print(f"  {title}")
            seen_titles.add(title)
        for line in format_result(result):
            print(f"    {target['refId']} {line}")
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            selector, label = label_values_query(variable["definition"])
            values = prometheus.api(f"label/{label}/values", **{"match[]": selector})
            print(f"  variable ${variable['name']}: {values}")
            if variable["name"] == "strategy":
                assert {"pref_aligner", "naive"} <= set(values)

    assert RULES_WITH_DATA <= {rule.get("record") for rule in rules()}
    assert PANELS_WITH_DATA <= seen_titles
    # A panel shows data when any of its queries does (a failures query is rightly empty).
    missing += [f"panel {title}" for title in sorted(PANELS_WITH_DATA - panels_with_data)]
    assert not missing, missing
    errors = prometheus.query('sum(perg:request_errors:ratio_5m{route="chat_completions"})')
    assert 0 < float(errors[0]["value"][1]) < 1  # one 503 among the chat requests
    samples = httpx2.get(f"{proxy.url}/perg/monitor/samples?limit=100", headers={"Authorization": "Bearer admin-secret"}).json()["data"]
    assert {(s["strategy"], s["role"]) for s in samples} >= {("pref_aligner", "served"), ("naive", "shadow")}
    print(f"\n=== /perg/monitor/samples: {len(samples)} judged samples behind the figures ===")
    for sample in samples[:8]:
        print(
            f"  {sample['strategy']}/{sample['role']}/{sample['relevance']}: verdict={sample['verdict']} follow={sample['follow_score']} reasons={sample['reasons']}"
        )
