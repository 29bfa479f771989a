"""Counters, histograms and labels: from the instance's records to Prometheus text and /instances."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from orchestrator.metrics import instances_view, metric_names, render_prometheus
from orchestrator.serving.metrics_hub import MetricsHub
from tests.fakes import ManualClock
from workers.instance_metrics import InstanceMetrics

CPU_LABELS = {"instance": "pool-0", "model": "m", "node": "host", "device_kind": "cpu"}
MIG_LABELS = {
    "instance": "slice-1",
    "model": "m",
    "node": "host",
    "device_kind": "mig",
    "gpu": "0",
    "UUID": "GPU-1e44b340-5807-0dbe-62e6-343a6b8b8bcd",
    "GPU_I_ID": "7",
    "GPU_I_PROFILE": "1g.5gb",
}


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(all_samples, name: str, **labels: str) -> float:
    matches = [v for (n, ls), v in all_samples.items() if n == name and all((k, x) in ls for k, x in labels.items())]
    assert len(matches) == 1, (name, labels, matches)
    return matches[0]


def recorded(clock: ManualClock) -> InstanceMetrics:
    metrics = InstanceMetrics(clock=clock)
    metrics.request_started("/embed")
    metrics.request_finished(0.04, embeddings=3, tokens=30, queue_s=0.01, inference_s=0.03)
    metrics.request_started("/v1/embeddings")
    metrics.request_finished(0.002, error_type="Validation")
    metrics.request_started("/v1/embeddings")
    metrics.request_finished(0.001, error_type="Overloaded")
    metrics.request_started("/embed")  # still in flight
    metrics.batch_done(texts=3, padded_tokens=36, seconds=0.03)
    return metrics


def test_counters_histograms_and_gauges_move_with_requests_errors_and_batches() -> None:
    clock = ManualClock(1000.0)
    hub = MetricsHub(clock=clock)
    hub.push(CPU_LABELS, recorded(clock).snapshot(load=0.5, queued_texts=4, capacity=8, memory_used_bytes=123))
    text = render_prometheus(hub.reports())
    got = samples(text)
    assert value(got, "orchestrator_requests_total", instance="pool-0", route="/embed") == 2
    assert value(got, "orchestrator_requests_total", route="/v1/embeddings") == 2
    assert value(got, "orchestrator_request_failures_total", error_type="Validation") == 1
    assert value(got, "orchestrator_request_failures_total", error_type="Overloaded") == 1
    assert value(got, "orchestrator_embeddings_total") == 3 and value(got, "orchestrator_tokens_total") == 30
    assert value(got, "orchestrator_in_flight_requests") == 1
    assert value(got, "orchestrator_queue_texts") == 4 and value(got, "orchestrator_load") == 0.5
    assert value(got, "orchestrator_request_duration_seconds_count") == 3
    assert value(got, "orchestrator_request_duration_seconds_bucket", le="0.005") == 2
    assert value(got, "orchestrator_queue_duration_seconds_sum") == 0.01
    assert value(got, "orchestrator_batch_size_bucket", le="4.0") == 1
    assert value(got, "orchestrator_batch_size_bucket", le="2.0") == 0
    assert value(got, "orchestrator_memory_used_bytes") == 123
    assert value(got, "orchestrator_up", instance="pool-0") == 1


def test_rates_come_from_successive_snapshots_and_reset_on_restart() -> None:
    clock = ManualClock(0.0)
    hub = MetricsHub(clock=clock)
    metrics = InstanceMetrics(clock=clock)
    hub.push(CPU_LABELS, metrics.snapshot())
    clock.now = 2.0
    metrics.request_started("/embed")
    metrics.request_finished(0.1, embeddings=10, tokens=200)
    hub.push(CPU_LABELS, metrics.snapshot())
    report = hub.reports()[0]
    assert report.rates == {"embeddings_per_second": 5.0, "tokens_per_second": 100.0}
    restarted = InstanceMetrics(clock=clock)
    clock.now = 3.0
    hub.push(CPU_LABELS, restarted.snapshot())
    assert hub.reports()[0].rates["embeddings_per_second"] == 0.0
    clock.now = 20.0
    assert value(samples(render_prometheus(hub.reports())), "orchestrator_up") == 0  # stale


def test_mig_instances_carry_dcgm_labels_and_cpu_ones_leave_them_empty() -> None:
    clock = ManualClock(5.0)
    hub = MetricsHub(clock=clock)
    hub.push(CPU_LABELS, InstanceMetrics(clock=clock).snapshot())
    hub.push(MIG_LABELS, InstanceMetrics(clock=clock).snapshot())
    got = samples(render_prometheus(hub.reports()))
    mig_up = [ls for (n, ls), _ in got.items() if n == "orchestrator_up" and ("instance", "slice-1") in ls][0]
    assert MIG_LABELS.items() <= dict(mig_up).items()
    cpu_up = [ls for (n, ls), _ in got.items() if n == "orchestrator_up" and ("instance", "pool-0") in ls][0]
    assert dict(cpu_up).get("GPU_I_ID", "") == ""


def test_instances_view_agrees_with_the_metrics() -> None:
    clock = ManualClock(1000.0)
    hub = MetricsHub(clock=clock)
    hub.push(CPU_LABELS, recorded(clock).snapshot(load=0.25, queued_texts=2, capacity=8))
    view = instances_view(hub.reports())
    stats = view["instance_stats"]["pool-0"]
    assert stats["load"] == 0.25 and stats["queue_length"] == 2 and stats["requests"] == 4
    assert stats["failures"] == {"Validation": 1, "Overloaded": 1} and stats["error_rate"] == 0.5
    assert abs(stats["response_time_ms"] - (0.043 / 3 * 1000)) < 1e-9
    assert view["gpu_utilization"]["value"] is None and "not measured" in view["gpu_utilization"]["why"]
    assert view["error_rates"] == {"requests": 4, "failures": 2, "rate": 0.5}


def test_every_exported_family_is_listed() -> None:
    clock = ManualClock(1.0)
    hub = MetricsHub(clock=clock)
    hub.push(
        CPU_LABELS,
        recorded(clock).snapshot(load=0.1, queued_texts=0, capacity=8, memory_used_bytes=1, memory_total_bytes=2),
    )
    families = {f.name for f in text_string_to_metric_families(render_prometheus(hub.reports()).decode())}
    # prometheus_client strips _total from counter family names
    assert {name.removesuffix("_total") for name in metric_names()} == families
