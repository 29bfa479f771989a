"""Metric names and labels in one place, the instances' reports, and their Prometheus text.

* ``render_prometheus``: Prometheus text (through prometheus_client, not hand-written) for ``GET /metrics``. GPU
  instances carry dcgm-exporter's labels (``gpu``, ``UUID`` of the parent GPU, ``GPU_I_ID``, ``GPU_I_PROFILE``) so a
  dashboard can join our series with ``DCGM_FI_PROF_GR_ENGINE_ACTIVE`` of the same slice. Counters are the current
  replica's own: they restart from zero when a replica is replaced, as Prometheus expects of a counter (``rate()`` and
  ``increase()`` handle the reset, and a sum carried over would be counted twice by them).
* ``InstanceReport``: one instance as the metrics hub knows it, with the counters of its replaced replicas carried
  (``CarriedCounters``) and the histogram arithmetic the ``/instances`` view (``instances_view.py``) builds on.

Snapshots are ``contracts.snapshot.InstanceSnapshot``, as replicas push them to the metrics hub. Pure: no Ray here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from orchestrator.contracts.snapshot import InstanceReport

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
