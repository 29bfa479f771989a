"""configs/grafana-dashboard.json and configs/prometheus.yml read only series the service (or dcgm-exporter) exports.

A renamed metric in ``orchestrator/metrics.py`` would otherwise leave a dashboard of empty panels that nobody
notices until they need it. The PromQL is not parsed by a full parser: a small scanner drops strings, label
matchers, ranges and label lists, then every bare identifier that is not a function or keyword is a metric name.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.frontdoor.app import FrontDoor, front_door_metric_names
from orchestrator.metrics import HISTOGRAMS, PREFIX, metric_names, render_prometheus
from orchestrator.serving.metrics_hub import MetricsHub
from tests.fakes import ManualClock
from workers.instance_metrics import InstanceMetrics

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DASHBOARD = CONFIGS / "grafana-dashboard.json"
PROMETHEUS = CONFIGS / "prometheus.yml"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
EXTERNAL_PREFIX = "DCGM_"

# Words that look like identifiers but are not metric names (functions are recognised by their "(").
KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # strings may hold anything
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers: label names are not metrics
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries, Grafana's $__rate_interval included
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    text = re.sub(r"\boffset\s+-?[\w$]+", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables outside brackets
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)\s*(\()?", text):
        word, is_call = match.group(1), match.group(2)
        if not is_call and word.lower() not in KEYWORDS:
            names.add(word)
    return names


def allowed_orchestrator_names() -> set[str]:
    """Sample names on the wire: every family (counters already end in _total), histograms with their suffixes."""
    histograms = {f"{PREFIX}_{name}" for name, _ in HISTOGRAMS.values()}
    front_door = front_door_metric_names()  # added to /metrics by the front door, not by the replicas
    return metric_names() | front_door | {name + suffix for name in histograms for suffix in HISTOGRAM_SUFFIXES}


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def panels() -> list[dict[str, Any]]:
    out = []
    for panel in load_dashboard()["panels"]:
        out += [panel, *panel.get("panels", [])]  # rows may hold collapsed panels
    return [panel for panel in out if panel.get("type") != "row"]


def expressions() -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in panels() for target in panel.get("targets", [])]


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (instance, le) (rate(a_bucket{x="b(c)", y=~"$v"}[$__rate_interval]))', {"a_bucket"}),
        ("a * on (gpu, UUID) group_left (instance) max by (gpu) (b == 1)", {"a", "b"}),
        ("histogram_quantile(0.99, sum(rate(c[5m])) by (le)) / clamp_min(d, 1e-9)", {"c", "d"}),
        ("e offset 5m and f unless g or sum without (job) (h)", {"e", "f", "g", "h"}),
        ('label_replace(i, "dst", "$1", "src", "(.*)")', {"i"}),
    ],
)
def test_the_scanner_finds_exactly_the_metric_names(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names


def test_dashboard_is_well_formed() -> None:
    dashboard = load_dashboard()
    assert dashboard["title"] and dashboard["uid"] and dashboard["schemaVersion"] >= 30
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    for panel in panels():
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            used = set(re.findall(r"\$(?!__)(\w+)", target["expr"])) | set(re.findall(r"\$\{(\w+)\}", target["expr"]))
            assert used <= variables, (panel["title"], used - variables)


def test_every_metric_is_exported_by_the_service_or_by_dcgm() -> None:
    allowed = allowed_orchestrator_names()
    for title, expr in expressions():
        names = promql_metric_names(expr)
        assert names, (title, expr)
        for name in names:
            if name.startswith(f"{PREFIX}_"):
                assert name in allowed, f"{title}: {name} is not exported (see orchestrator/metrics.py)"
            else:
                assert name.startswith(EXTERNAL_PREFIX), f"{title}: {name} is neither ours nor dcgm-exporter's"


def test_every_orchestrator_metric_used_is_in_the_real_exposition() -> None:
    clock = ManualClock(100.0)
    metrics = InstanceMetrics(clock=clock)
    metrics.request_started("/embed")
    metrics.request_finished(0.04, embeddings=3, tokens=30, queue_s=0.01, inference_s=0.03)
    metrics.request_started("/embed")
    metrics.request_finished(0.001, error_type="Validation")
    metrics.batch_done(texts=3, padded_tokens=36, seconds=0.03)
    hub = MetricsHub(clock=clock)
    gauges = {"load": 0.5, "queued_texts": 1, "capacity": 8, "memory_used_bytes": 1, "memory_total_bytes": 2}
    hub.push({"instance": "slice-1", "model": "m", "device_kind": "mig"}, metrics.snapshot(**gauges))
    door = FrontDoor(max_request_bytes=100, request_timeout_s=5, readiness=lambda: (1, 1))
    text = render_prometheus(hub.reports()).decode() + door.prometheus_text()  # what /metrics answers
    exposed = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    used = {name for _, expr in expressions() for name in promql_metric_names(expr) if name.startswith(PREFIX)}
    assert used - exposed == set()


def _find(predicate: Any) -> list[str]:
    return [title for title, expr in expressions() if predicate(title.lower(), expr)]


def test_the_panels_an_operator_needs_are_there() -> None:
    assert _find(lambda _, e: "orchestrator_load" in e)
    assert _find(lambda _, e: "orchestrator_queue_texts" in e)
    assert _find(lambda _, e: "rate(orchestrator_requests_total" in e)
    assert _find(lambda _, e: "orchestrator_embeddings_total" in e)
    assert _find(lambda _, e: "by (error_type)" in e and "orchestrator_request_failures_total" in e)
    assert _find(lambda _, e: "orchestrator_memory_used_bytes" in e)
    for quantile in ("0.5", "0.99"):
        assert _find(
            lambda _, e, q=quantile: (
                e.startswith(f"histogram_quantile({q},")
                and "le)" in e
                and "(rate(orchestrator_request_duration_seconds_bucket{" in e
            )
        ), quantile


def test_gpu_slices_are_joined_with_dcgm_on_its_labels() -> None:
    exprs = [expr for _, expr in expressions() if "DCGM_FI_PROF_GR_ENGINE_ACTIVE" in expr]
    assert exprs, "no panel reads dcgm-exporter's engine activity"
    # dcgm-exporter's own `instance` is its host:port; group_left (instance) names the series after our instance.
    assert any(
        re.search(r"\bon\s*\(\s*gpu\s*,\s*UUID\s*,\s*GPU_I_ID\s*\)\s*group_left\s*\(\s*instance\s*\)", e)
        and "orchestrator_" in e
        for e in exprs
    ), exprs


def test_prometheus_scrapes_the_service_keeping_its_instance_label() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    ours = jobs["mig-orchestrator"]
    assert ours.get("metrics_path", "/metrics") == "/metrics"
    assert ours["honor_labels"] is True  # else our `instance` label becomes exported_instance
    assert [t for group in ours["static_configs"] for t in group["targets"]] == ["127.0.0.1:8000"]
    dcgm = jobs["dcgm-exporter"]
    assert [t for group in dcgm["static_configs"] for t in group["targets"]] == ["127.0.0.1:9400"]
