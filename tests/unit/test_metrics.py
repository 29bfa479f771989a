"""Counters, histograms and labels: from the instance's records to Prometheus text and /instances."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.contracts.snapshot import quantile
from orchestrator.instances_view import failure_class, instances_view, with_front_door
from orchestrator.metrics import metric_names, render_prometheus
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
    assert view["error_rates"] == {
        "requests": 4,
        "failures": 2,
        "rate": 0.5,
        "client_errors": 1,  # the 422
        "server_failures": 0,
        "overloaded": 1,  # the 429
        "server_failure_rate": 0.0,
    }
    assert stats["client_errors"] == 1 and stats["server_failures"] == 0 and stats["overloaded"] == 1


def test_the_view_groups_instances_by_model_with_per_model_totals() -> None:
    """Several models behind one endpoint: /instances (and status, the dashboard) show each model's instances and
    totals; one model's errors never appear in another's."""
    from orchestrator.cli.status import status_table

    clock = ManualClock(1000.0)
    hub = MetricsHub(clock=clock)
    hub.push(CPU_LABELS, recorded(clock).snapshot(load=0.5, capacity=8))
    other = {**CPU_LABELS, "instance": "pool-1", "model": "reranker"}
    quiet = InstanceMetrics(clock=clock)
    quiet.request_started("/rerank")
    quiet.request_finished(0.01, embeddings=2, tokens=20)
    hub.push(other, quiet.snapshot(load=0.0, capacity=4))
    models = instances_view(hub.reports())["models"]
    assert list(models) == ["m", "reranker"]
    assert models["m"]["instances"] == ["pool-0"] and models["m"]["requests"] == 4
    assert models["m"]["client_errors"] == 1 and models["m"]["overloaded"] == 1 and models["m"]["capacity"] == 8
    assert models["reranker"] == {
        "instances": ["pool-1"],
        "reporting": 1,
        "requests": 1,
        "client_errors": 0,
        "server_failures": 0,
        "overloaded": 0,
        "throughput_embeddings_per_s": 0.0,
        "capacity": 4.0,
    }
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(status_table(instances_view(hub.reports()), "http://x"))
    text = console.export_text()
    assert "model" in text.splitlines()[2] and "1/1 reporting" in text and text.index("pool-0") < text.index("pool-1")


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


def _served(metrics: InstanceMetrics, requests: int, seconds: float = 0.02, error_type: str | None = None) -> None:
    for _ in range(requests):
        metrics.request_started("/embed")
        metrics.request_finished(seconds, error_type=error_type, embeddings=0 if error_type else 2, tokens=10)


def test_a_replaced_replicas_counters_are_carried_so_totals_never_go_down() -> None:
    clock = ManualClock(100.0)
    hub = MetricsHub(clock=clock)
    first = InstanceMetrics(clock=clock)
    _served(first, 5)
    _served(first, 2, error_type="Validation")
    hub.push(CPU_LABELS, first.snapshot())
    other = InstanceMetrics(clock=clock)
    _served(other, 3)
    hub.push({**CPU_LABELS, "instance": "pool-1"}, other.snapshot())
    assert instances_view(hub.reports())["error_rates"]["requests"] == 10

    clock.now = 110.0  # pool-0's replica is killed; its replacement starts from zero and serves 1 request
    second = InstanceMetrics(clock=clock)
    _served(second, 1, error_type="Backend")
    hub.push(CPU_LABELS, second.snapshot())
    view = instances_view(hub.reports())
    stats = view["instance_stats"]["pool-0"]
    assert stats["requests"] == 8 and view["error_rates"]["requests"] == 11  # 7 + 1, + pool-1's 3: up, not 4
    assert stats["failures"] == {"Validation": 2, "Backend": 1} and stats["replacements"] == 1
    assert (stats["client_errors"], stats["server_failures"]) == (2, 1)
    # Prometheus keeps the replica's own counter: it resets, which rate() and increase() expect of a counter.
    got = samples(render_prometheus(hub.reports()))
    assert value(got, "orchestrator_requests_total", instance="pool-0", route="/embed") == 1
    assert value(got, "orchestrator_embeddings_total", instance="pool-0") == 0

    clock.now = 111.0
    _served(first, 4)  # a late push from the replaced replica must not be counted (it was carried as it stood)
    hub.push(CPU_LABELS, first.snapshot())
    _served(second, 2)
    hub.push(CPU_LABELS, second.snapshot())
    stats = instances_view(hub.reports())["instance_stats"]["pool-0"]
    assert stats["requests"] == 10 and stats["replacements"] == 1  # 7 carried + the new replica's 3

    clock.now = 120.0
    hub.push(CPU_LABELS, InstanceMetrics(clock=clock).snapshot())  # a second replacement carries both
    stats = instances_view(hub.reports())["instance_stats"]["pool-0"]
    assert stats["requests"] == 10 and stats["replacements"] == 2
    assert abs(stats["response_time_ms"] - 20.0) < 1e-9  # the carried histograms too: 10 requests of 20 ms


@pytest.mark.parametrize(
    ("error_type", "expected"),
    [
        ("Validation", "client"),  # 422 (and 400 for malformed JSON)
        ("Empty", "client"),
        ("PayloadTooLarge", "client"),
        ("Unauthorized", "client"),
        ("ClientTimeout", "client"),
        ("Http", "client"),  # Starlette's own 405 and the like, wrapped by the replica's app
        ("Overloaded", "overloaded"),  # 429: shed load
        ("Backend", "server"),  # 424, TEI's status for a failing model: the service's fault
        ("Timeout", "server"),
        ("Internal", "server"),
        ("Unavailable", "server"),
        ("SomethingNew", "server"),  # unknown: never blamed on the client
    ],
)
def test_failures_are_classed_by_the_status_of_their_error_type(error_type: str, expected: str) -> None:
    assert failure_class(error_type) == expected


def test_p50_and_p99_are_estimated_from_the_buckets_as_prometheus_does() -> None:
    histogram = {"bounds": [0.01, 0.1, 1.0], "counts": [50, 40, 10, 0], "sum": 9.0, "count": 100}
    assert quantile(histogram, 0.5) == pytest.approx(0.01)  # the 50th of 100 is the top of the first bucket
    assert quantile(histogram, 0.9) == pytest.approx(0.1)
    assert quantile(histogram, 0.99) == pytest.approx(0.1 + 0.9 * 9 / 10)  # linear inside (0.1, 1.0]
    assert quantile({**histogram, "counts": [0, 0, 0, 3]}, 0.5) == 1.0  # in +Inf: the highest finite bound
    assert quantile({**histogram, "counts": [0, 0, 0, 0]}, 0.5) is None

    clock = ManualClock(1.0)
    hub = MetricsHub(clock=clock)
    metrics = InstanceMetrics(clock=clock)
    _served(metrics, 98, seconds=0.004)
    _served(metrics, 2, seconds=3.0)
    hub.push(CPU_LABELS, metrics.snapshot())
    stats = instances_view(hub.reports())["instance_stats"]["pool-0"]
    assert stats["response_p50_ms"] == pytest.approx(5.0 * 50 / 98)  # rank 50 of the 98 in (0, 5 ms]
    assert 2500 < stats["response_p99_ms"] <= 5000  # the slow two are in (2.5 s, 5 s]
    assert stats["latency_window_s"] is None  # less than a minute known: since start


def test_latencies_cover_the_last_minute_once_the_hub_has_one() -> None:
    clock = ManualClock(0.0)
    hub = MetricsHub(clock=clock)
    metrics = InstanceMetrics(clock=clock)
    _served(metrics, 10, seconds=2.0)  # slow at first
    for second in range(1, 75):
        clock.now = float(second)
        if second > 5:
            _served(metrics, 1, seconds=0.02)
        hub.push(CPU_LABELS, metrics.snapshot(load=0.5))
    stats = instances_view(hub.reports())["instance_stats"]["pool-0"]
    assert stats["latency_window_s"] == pytest.approx(60.0, abs=1.0)
    assert stats["response_p99_ms"] < 25 and stats["response_time_ms"] == pytest.approx(20.0)  # no slow one left
    assert stats["requests"] == 79  # totals still count everything


def test_the_view_carries_the_last_minute_so_charts_start_full() -> None:
    clock = ManualClock(1000.0)
    hub = MetricsHub(clock=clock)
    a, b = InstanceMetrics(clock=clock), InstanceMetrics(clock=clock)
    for step in range(90):
        clock.now = 1000.0 + step
        _served(a, 1)  # 2 embeddings a second
        hub.push(CPU_LABELS, a.snapshot(load=0.25))
        if step >= 80:  # pool-1 started 10 s ago, half a second out of step
            clock.now += 0.5
            _served(b, 2)
            hub.push({**CPU_LABELS, "instance": "pool-1"}, b.snapshot(load=0.5))
    view = instances_view(hub.reports())
    history = view["instance_stats"]["pool-0"]["history"]
    assert len(history["throughput"]) == 60 and history["throughput"][-1] == 2.0 and history["load"][-1] == 0.25
    late = view["instance_stats"]["pool-1"]["history"]
    assert len(late["throughput"]) == 60 and late["throughput"][:49] == [None] * 49  # not running yet
    assert late["throughput"][-1] == 4.0
    assert view["history"]["throughput"][-1] == 6.0 and view["history"]["throughput"][0] == 2.0


def test_a_replica_down_for_a_while_leaves_a_gap_in_its_chart() -> None:
    clock = ManualClock(0.0)
    hub = MetricsHub(clock=clock)
    metrics = InstanceMetrics(clock=clock)
    for second in [*range(0, 20), *range(40, 60)]:
        clock.now = float(second)
        if second == 40:
            metrics = InstanceMetrics(clock=clock)  # replaced after 20 s down
        _served(metrics, 1)
        hub.push(CPU_LABELS, metrics.snapshot(load=0.1))
    history = instances_view(hub.reports())["instance_stats"]["pool-0"]["history"]
    # A point stands for its second and the next (pushes jitter): a 20 s outage leaves 19 empty seconds, in one run.
    gap = [n for n, load in enumerate(history["load"]) if load is None]
    assert len(gap) == 19 and gap == list(range(gap[0], gap[0] + 19)) and history["load"][gap[0] - 1] == 0.1
    assert all(value is not None and value >= 0 for value in history["throughput"][41:])  # no dip below zero


def test_through_the_front_door_the_view_gains_its_counters_and_readiness() -> None:
    view = instances_view([])
    front = {"requests": 9, "retries": 3, "instance_losses": 3, "unavailable": 0, "timeouts": 0}
    decorated = with_front_door(view, front, (1, 2))
    assert decorated["front_door"]["retries"] == 3
    assert (decorated["instances_ready"], decorated["instances_planned"]) == (1, 2)
    assert "instances_ready" not in with_front_door(view, front, None)  # not forwarding yet: nothing to claim
