"""Metric names and labels in one place, and the two views of the instances' snapshots.

* ``render_prometheus``: Prometheus text (through prometheus_client, not hand-written) for ``GET /metrics``. GPU
  instances carry dcgm-exporter's labels (``gpu``, ``UUID`` of the parent GPU, ``GPU_I_ID``, ``GPU_I_PROFILE``) so a
  dashboard can join our series with ``DCGM_FI_PROF_GR_ENGINE_ACTIVE`` of the same slice.
* ``instances_view``: the JSON of ``GET /instances``, shaped after the seed's ``collect_metrics``.

Snapshots are ``contracts.snapshot.InstanceSnapshot``, as replicas push them to the metrics hub. Pure: no Ray here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.contracts.snapshot import InstanceSnapshot

PREFIX = "orchestrator"
LABELS = ("instance", "model", "node", "device_kind", "gpu", "UUID", "GPU_I_ID", "GPU_I_PROFILE")

COUNTERS = {
    "requests": ("requests_total", "Requests received, by route.", "route"),
    "failures": ("request_failures_total", "Requests that failed, by error type.", "error_type"),
}
TOTALS = {
    "embeddings": ("embeddings_total", "Embeddings returned."),
    "tokens": ("tokens_total", "Tokens embedded (special tokens included)."),
    "padded_tokens": ("padded_tokens_total", "Tokens computed including padding (efficiency = tokens / this)."),
}
HISTOGRAMS = {
    "queue_seconds": ("queue_duration_seconds", "Time from arrival at the instance to its first batch."),
    "inference_seconds": ("inference_duration_seconds", "Time from the first batch to the last vector."),
    "request_seconds": ("request_duration_seconds", "Time the instance spent on a request."),
    "batch_size": ("batch_size", "Texts per forward pass."),
    "batch_seconds": ("batch_duration_seconds", "Time of one forward pass."),
}
GAUGES = {
    "in_flight": ("in_flight_requests", "Requests being served by the instance."),
    "queued_texts": ("queue_texts", "Texts waiting or computing in the instance's batcher."),
    "load": ("load", "Busy fraction of the instance over the last seconds (the balancer's load input)."),
    "embeddings_per_second": ("embeddings_per_second", "Embeddings per second over the last interval."),
    "tokens_per_second": ("tokens_per_second", "Tokens per second over the last interval."),
    "memory_used_bytes": ("memory_used_bytes", "Memory in use: the MIG slice's (NVML) or the process's (CPU)."),
    "memory_total_bytes": ("memory_total_bytes", "Memory of the slice or pool's process limit."),
    "capacity": ("capacity_requests", "Requests the instance is sized to hold (the balancer's queue normaliser)."),
}


def metric_names() -> set[str]:
    """Every exported sample family name (histograms also export _bucket, _sum and _count)."""
    names = {f"{PREFIX}_{name}" for name, _, _ in COUNTERS.values()}
    names |= {f"{PREFIX}_{name}" for name, _ in TOTALS.values()}
    names |= {f"{PREFIX}_{name}" for name, _ in HISTOGRAMS.values()}
    names |= {f"{PREFIX}_{name}" for name, _ in GAUGES.values()}
    names |= {f"{PREFIX}_up"}
    return names


@dataclass(frozen=True)
class InstanceReport:
    """One instance as the hub knows it: identity labels, its latest snapshot, its rates, its age."""

    labels: dict[str, str]
    snapshot: InstanceSnapshot
    rates: dict[str, float]
    age_s: float


def label_values(labels: dict[str, str]) -> list[str]:
    return [str(labels.get(name, "")) for name in LABELS]


class _SnapshotCollector:
    def __init__(self, reports: Sequence[InstanceReport]) -> None:
        self._reports = reports

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        up = GaugeMetricFamily(f"{PREFIX}_up", "1 while the instance reports (stale after 10 s).", labels=LABELS)
        for report in self._reports:
            up.add_metric(label_values(report.labels), 1.0 if report.age_s < 10 else 0.0)
        yield up
        for key, (name, doc, extra) in COUNTERS.items():
            family = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=(*LABELS, extra))
            for report in self._reports:
                for value, count in report.snapshot.get(key, {}).items():
                    family.add_metric([*label_values(report.labels), value], count)
            yield family
        for key, (name, doc) in TOTALS.items():
            family = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=LABELS)
            for report in self._reports:
                family.add_metric(label_values(report.labels), report.snapshot.get(key, 0))
            yield family
        for key, (name, doc) in HISTOGRAMS.items():
            family = HistogramMetricFamily(f"{PREFIX}_{name}", doc, labels=LABELS)
            for report in self._reports:
                histogram = report.snapshot.get("histograms", {}).get(key)
                if histogram is None:
                    continue
                running, buckets = 0, []
                for bound, count in zip([*histogram["bounds"], float("inf")], histogram["counts"], strict=True):
                    running += count
                    buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
                family.add_metric(label_values(report.labels), buckets, histogram["sum"])
            yield family
        for key, (name, doc) in GAUGES.items():
            family = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=LABELS)
            for report in self._reports:
                value = _gauge(report, key)
                if value is not None:
                    family.add_metric(label_values(report.labels), value)
            yield family


def _gauge(report: InstanceReport, key: str) -> float | None:
    if key in report.rates:
        return report.rates[key]
    if key == "in_flight":
        return float(report.snapshot.get("in_flight", 0))
    value = report.snapshot.get("gauges", {}).get(key)
    return None if value is None else float(value)


def render_prometheus(reports: Sequence[InstanceReport]) -> bytes:
    """Prometheus text exposition of every instance's series."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(reports))  # type: ignore[arg-type]
    return generate_latest(registry)


def _mean_ms(histogram: dict[str, Any] | None) -> float | None:
    if not histogram or not histogram.get("count"):
        return None
    return histogram["sum"] / histogram["count"] * 1000


def instances_view(reports: Sequence[InstanceReport], gpu_utilization: dict[str, Any] | None = None) -> dict[str, Any]:
    """The seed's ``collect_metrics`` shape: totals plus one entry per instance."""
    instance_stats = {}
    total_requests = total_failures = 0
    for report in reports:
        snapshot = report.snapshot
        gauges = snapshot.get("gauges", {})
        requests = sum(snapshot.get("requests", {}).values())
        failures = sum(snapshot.get("failures", {}).values())
        total_requests += requests
        total_failures += failures
        histograms = snapshot.get("histograms", {})
        instance_stats[report.labels["instance"]] = {
            "labels": report.labels,
            "load": gauges.get("load"),
            "queue_length": gauges.get("queued_texts"),
            "in_flight": snapshot.get("in_flight", 0),
            "response_time_ms": _mean_ms(histograms.get("request_seconds")),
            "queue_time_ms": _mean_ms(histograms.get("queue_seconds")),
            "inference_time_ms": _mean_ms(histograms.get("inference_seconds")),
            "throughput_embeddings_per_s": report.rates.get("embeddings_per_second"),
            "tokens_per_s": report.rates.get("tokens_per_second"),
            "requests": requests,
            "failures": snapshot.get("failures", {}),
            "error_rate": failures / requests if requests else 0.0,
            "memory_used_bytes": gauges.get("memory_used_bytes"),
            "memory_total_bytes": gauges.get("memory_total_bytes"),
            "capacity": gauges.get("capacity"),
            "reporting": report.age_s < 10,
        }
    return {
        "gpu_utilization": gpu_utilization
        or {"value": None, "why": "not measured: NVML reports no utilisation for MIG slices (A100/A30) or CPU pools"},
        "memory_usage_bytes": sum(s["memory_used_bytes"] or 0 for s in instance_stats.values()),
        "throughput_embeddings_per_s": sum(s["throughput_embeddings_per_s"] or 0 for s in instance_stats.values()),
        "error_rates": {
            "requests": total_requests,
            "failures": total_failures,
            "rate": total_failures / total_requests if total_requests else 0.0,
        },
        "instance_stats": instance_stats,
    }
