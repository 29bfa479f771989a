"""The JSON of ``GET /instances`` that the dashboard and ``orchestrator status`` read, from the instances' reports.

``instances_view`` is shaped after the seed's ``collect_metrics``. Its totals never go down: an instance's replaced
replicas' counters are carried (``CarriedCounters``, kept by the metrics hub) and added to the current
replica's. Failures are split by who caused them (``failure_class``: the client, the service, or load shedding);
latencies are the mean, p50 and p99 of the last minute when the hub keeps one (``InstanceReport.recent``), else since
start; ``history`` is the last minute's throughput and load, so a page opened now draws the past minute at once.
``models`` groups the instances by the model they serve, with per-model totals. ``with_front_door`` adds what only
the front door knows (its retries, instance losses, own failures and the instances ready right now). Pure: no Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from orchestrator.contracts.errors import OrchestratorError
from orchestrator.contracts.snapshot import (
    HISTORY_POINTS,
    HistogramSnapshot,
    HistoryPoint,
    InstanceReport,
    lifetime,
    quantile,
)

FailureClass = Literal["client", "server", "overloaded"]
# Error types made outside the hierarchy: the replica's app wraps Starlette's own HTTP errors (405 and the like).
STATUS_OUTSIDE_HIERARCHY = {"Http": 400}
TEI_BACKEND_FAILURE = 424  # TEI's status for a model that failed: the service's fault, though a 4xx


def _status_by_error_type() -> dict[str, int]:
    """error type -> HTTP status, from every subclass of the one hierarchy loaded now (walked at each call, so
    classes defined in modules imported later are found too; there are a few dozen)."""
    statuses = dict(STATUS_OUTSIDE_HIERARCHY)
    pending: list[type[OrchestratorError]] = [OrchestratorError]
    while pending:
        cls = pending.pop()
        # Where two classes share a type (Validation is 400 and 422) both are 4xx; the first seen is kept.
        statuses.setdefault(cls.error_type, cls.status_code)
        pending += cls.__subclasses__()
    return statuses


def failure_class(error_type: str, statuses: Mapping[str, int] | None = None) -> FailureClass:
    """Who caused a failure of this type, by the HTTP status of its error class: ``overloaded`` for 429 (the service
    shed load; the client retries later), ``client`` for any other 4xx (the request was wrong), ``server`` for 5xx,
    for 424 (the model failed) and for a type no class declares (an unknown failure is never blamed on a client)."""
    status = (statuses if statuses is not None else _status_by_error_type()).get(error_type, 500)
    if status == 429:
        return "overloaded"
    if 400 <= status < 500 and status != TEI_BACKEND_FAILURE:
        return "client"
    return "server"


def split_failures(failures: Mapping[str, int], statuses: Mapping[str, int] | None = None) -> dict[str, int]:
    """Failure counts by error type -> ``client_errors``, ``server_failures`` and ``overloaded``."""
    statuses = statuses if statuses is not None else _status_by_error_type()
    split = {"client": 0, "server": 0, "overloaded": 0}
    for error_type, count in failures.items():
        split[failure_class(error_type, statuses)] += count
    return {"client_errors": split["client"], "server_failures": split["server"], "overloaded": split["overloaded"]}


def _mean_ms(histogram: HistogramSnapshot | None) -> float | None:
    if not histogram or not histogram.get("count"):
        return None
    return histogram["sum"] / histogram["count"] * 1000


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _on_grid(history: Sequence[HistoryPoint], end: float, value: Callable[[HistoryPoint], float | None]) -> list:
    """``value`` of the point of each of the ``HISTORY_POINTS`` seconds up to ``end`` (None where the instance had
    none: it was down, or not yet started), so that charts of instances that push out of step line up in time."""
    grid: list[float | None] = []
    for step in range(HISTORY_POINTS - 1, -1, -1):
        second = end - step
        within = [point for point in history if second - 1.5 < point.time <= second + 0.5]
        grid.append(value(within[-1]) if within else None)
    return grid


def _histories(reports: Sequence[InstanceReport]) -> tuple[dict[str, dict[str, list]], list[float | None]]:
    """Each instance's throughput and load over the last minute, and the total throughput, on one grid of seconds
    (leading seconds before any point are left out: a chart starts where the data does)."""
    ends = [point.time for report in reports for point in report.history]
    if not ends:
        return {report.labels["instance"]: {"throughput": [], "load": []} for report in reports}, []
    end = max(ends)
    per_instance, columns = {}, []
    for report in reports:
        throughput = _on_grid(report.history, end, lambda p: _rounded(p.embeddings_per_second, 2))
        load = _on_grid(report.history, end, lambda p: _rounded(p.load, 4))
        per_instance[report.labels["instance"]] = {"throughput": throughput, "load": load}
        columns.append(throughput)
    total = [
        round(sum(v for v in second if v is not None), 2) if any(v is not None for v in second) else None
        for second in zip(*columns, strict=True)
    ]
    first = next((n for n, value in enumerate(total) if value is not None), len(total))
    for series in per_instance.values():
        series["throughput"], series["load"] = series["throughput"][first:], series["load"][first:]
    return per_instance, total[first:]


def instances_view(reports: Sequence[InstanceReport], gpu_utilization: dict[str, Any] | None = None) -> dict[str, Any]:
    """The seed's ``collect_metrics`` shape: totals plus one entry per instance (see the module docstring)."""
    statuses = _status_by_error_type()
    instance_stats = {}
    totals = {"requests": 0, "failures": 0, "client_errors": 0, "server_failures": 0, "overloaded": 0}
    histories, total_history = _histories(reports)
    for report in reports:
        snapshot = lifetime(report.carried, report.snapshot)
        gauges = snapshot.get("gauges", {})
        requests = sum(snapshot["requests"].values())
        failures = sum(snapshot["failures"].values())
        split = split_failures(snapshot["failures"], statuses)
        for key, count in (("requests", requests), ("failures", failures), *split.items()):
            totals[key] += count
        latency = report.recent if report.recent is not None else snapshot["histograms"]
        instance_stats[report.labels["instance"]] = {
            "labels": report.labels,
            "load": gauges.get("load"),
            "queue_length": gauges.get("queued_texts"),
            "in_flight": snapshot.get("in_flight", 0),
            "response_time_ms": _mean_ms(latency.get("request_seconds")),
            "response_p50_ms": _ms(quantile(latency.get("request_seconds"), 0.5)),
            "response_p99_ms": _ms(quantile(latency.get("request_seconds"), 0.99)),
            "queue_time_ms": _mean_ms(latency.get("queue_seconds")),
            "inference_time_ms": _mean_ms(latency.get("inference_seconds")),
            # Seconds the latencies cover; None: since the instance started (no minute of history kept yet).
            "latency_window_s": _rounded(report.recent_s, 1) if report.recent is not None else None,
            "throughput_embeddings_per_s": report.rates.get("embeddings_per_second"),
            "tokens_per_s": report.rates.get("tokens_per_second"),
            "requests": requests,
            "failures": snapshot["failures"],
            **split,
            "error_rate": failures / requests if requests else 0.0,
            "replacements": report.carried.replacements,
            "memory_used_bytes": gauges.get("memory_used_bytes"),
            "memory_total_bytes": gauges.get("memory_total_bytes"),
            "capacity": gauges.get("capacity"),
            "reporting": report.age_s < 10,
            "history": histories[report.labels["instance"]],
        }
    requests = totals["requests"]
    return {
        "gpu_utilization": gpu_utilization
        or {"value": None, "why": "not measured: NVML reports no utilisation for MIG slices (A100/A30) or CPU pools"},
        "memory_usage_bytes": sum(s["memory_used_bytes"] or 0 for s in instance_stats.values()),
        "throughput_embeddings_per_s": sum(s["throughput_embeddings_per_s"] or 0 for s in instance_stats.values()),
        "error_rates": {
            **totals,
            "rate": totals["failures"] / requests if requests else 0.0,
            "server_failure_rate": totals["server_failures"] / requests if requests else 0.0,
        },
        "history": {"throughput": total_history},
        "models": models_view(instance_stats),
        "instance_stats": instance_stats,
    }


def models_view(instance_stats: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per served model (the ``model`` label of its instances): its instances and their totals, in name order."""
    models: dict[str, dict[str, Any]] = {}
    for name, stats in sorted(instance_stats.items()):
        model = str(stats["labels"].get("model", ""))
        entry = models.setdefault(
            model,
            {
                "instances": [],
                "reporting": 0,
                "requests": 0,
                "client_errors": 0,
                "server_failures": 0,
                "overloaded": 0,
                "throughput_embeddings_per_s": 0.0,
                "capacity": 0.0,
            },
        )
        entry["instances"].append(name)
        entry["reporting"] += bool(stats["reporting"])
        for key in ("requests", "client_errors", "server_failures", "overloaded"):
            entry[key] += stats[key]
        entry["throughput_embeddings_per_s"] += stats["throughput_embeddings_per_s"] or 0.0
        entry["capacity"] += stats["capacity"] or 0.0
    return models


def with_front_door(
    view: dict[str, Any], front_door: Mapping[str, int], readiness: tuple[int, int] | None
) -> dict[str, Any]:
    """``view`` as the front door serves it: its own counters under ``front_door`` (retries, instance losses, its own
    503/504/500 answers; every path counted, the dashboard's polls included) and, once it forwards,
    ``instances_ready``/``instances_planned``: the instances it can reach now, which changes the moment a lane
    breaks, while a dead replica's last report stays "reporting" for up to 10 s."""
    decorated = {**view, "front_door": dict(front_door)}
    if readiness is not None:
        decorated["instances_ready"], decorated["instances_planned"] = readiness
    return decorated
