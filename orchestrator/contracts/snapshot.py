"""What a replica tells the metrics hub: the typed snapshot of one instance, where its lane listens, and the name
under which the hub actor is found.

A replica builds an ``InstanceSnapshot`` and pushes it about once a second with its identity labels and its
``LaneAddress``; the hub answers ``InstanceReport``s (the latest snapshot, rates, the counters of replaced replicas
carried, the last minute), which ``/metrics`` and ``/instances`` are rendered from. Counters and histogram buckets
are cumulative since ``started_at``, as Prometheus expects; ``lifetime``, ``add_histograms``, ``subtract_histograms``
and ``quantile`` are the arithmetic every reader of them shares.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, TypedDict

HUB_NAME = "metrics-hub"
HUB_NAMESPACE = "mig-orchestrator"


class HistogramSnapshot(TypedDict):
    """Per-bucket counts (the last bucket is +Inf), with the sum and count of every observation."""

    bounds: list[float]
    counts: list[int]
    sum: float
    count: int


class InstanceSnapshot(TypedDict):
    """One instance's counters since it started, and its point-in-time gauges."""

    time: float  # when the snapshot was taken (epoch seconds): rates are differences between two snapshots
    started_at: float  # a new value means a new replica: its counters began again
    requests: dict[str, int]  # by route
    failures: dict[str, int]  # by error type
    embeddings: int
    tokens: int
    padded_tokens: int
    in_flight: int
    histograms: dict[str, HistogramSnapshot]  # queue_seconds, inference_seconds, request_seconds, batch_*
    gauges: dict[str, float | int | None]  # load, queued_texts, capacity, memory_*: None when not measured


class LaneAddress(TypedDict):
    """Where a replica's direct lane listens; ``incarnation`` changes when a replica replaces another."""

    host: str
    port: int
    incarnation: str


# ---- what the metrics hub answers about an instance, and the arithmetic of snapshots -------------------------------

LATENCY_KEYS = ("queue_seconds", "inference_seconds", "request_seconds")
HISTORY_S = 60.0  # the dashboard's charts and the latency window: a minute, at one sample a second
HISTORY_POINTS = int(HISTORY_S)


@dataclass(frozen=True)
class CarriedCounters:
    """The counters of an instance's replaced replicas, summed; ``lifetime`` adds the current replica's on top.

    A new replica's counters start from zero (its ``InstanceSnapshot.started_at`` differs); carrying the last
    snapshot of the one it replaced keeps the instance's totals monotonic. What a killed replica did after its last
    push (at most about a second) dies with it.
    """

    requests: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    embeddings: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    histograms: dict[str, HistogramSnapshot] = field(default_factory=dict)
    replacements: int = 0

    def plus(self, retired: InstanceSnapshot) -> CarriedCounters:
        """These counters with a replaced replica's last snapshot added (and one more replacement)."""
        total = lifetime(self, retired)
        return CarriedCounters(
            requests=total["requests"],
            failures=total["failures"],
            embeddings=total["embeddings"],
            tokens=total["tokens"],
            padded_tokens=total["padded_tokens"],
            histograms=total["histograms"],
            replacements=self.replacements + 1,
        )


class HistoryPoint(NamedTuple):
    """One second of an instance's recent past: when, its throughput since the previous point, its load."""

    time: float
    embeddings_per_second: float | None
    load: float | None


@dataclass(frozen=True)
class InstanceReport:
    """One instance as the hub knows it: identity labels, its latest snapshot, its rates, its age; from the hub also
    its replaced replicas' counters, the last minute's points and the latency histograms of the last ``recent_s``
    (``recent`` is None where nobody kept a window: a replica answering alone shows latencies since it started)."""

    labels: dict[str, str]
    snapshot: InstanceSnapshot
    rates: dict[str, float]
    age_s: float
    carried: CarriedCounters = field(default_factory=CarriedCounters)
    history: tuple[HistoryPoint, ...] = ()
    recent: dict[str, HistogramSnapshot] | None = None
    recent_s: float | None = None


def lifetime(carried: CarriedCounters, snapshot: InstanceSnapshot) -> InstanceSnapshot:
    """``snapshot`` with ``carried`` added to its counters and histograms: the instance's counts since the service
    started (gauges, ``time`` and ``started_at`` stay the current replica's)."""
    histograms = dict(snapshot.get("histograms", {}))
    for key, before in carried.histograms.items():
        now = histograms.get(key)
        histograms[key] = before if now is None else add_histograms(before, now)
    return {
        "time": snapshot["time"],
        "started_at": snapshot["started_at"],
        "requests": _add_counts(carried.requests, snapshot.get("requests", {})),
        "failures": _add_counts(carried.failures, snapshot.get("failures", {})),
        "embeddings": carried.embeddings + snapshot.get("embeddings", 0),
        "tokens": carried.tokens + snapshot.get("tokens", 0),
        "padded_tokens": carried.padded_tokens + snapshot.get("padded_tokens", 0),
        "in_flight": snapshot.get("in_flight", 0),
        "histograms": histograms,
        "gauges": snapshot.get("gauges", {}),
    }


def _add_counts(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    return {key: a.get(key, 0) + b.get(key, 0) for key in {**a, **b}}


def add_histograms(a: HistogramSnapshot, b: HistogramSnapshot) -> HistogramSnapshot:
    """Bucket by bucket; ``b`` alone when the bounds differ (a release that changed buckets cannot be summed)."""
    if a["bounds"] != b["bounds"]:
        return b
    counts = [x + y for x, y in zip(a["counts"], b["counts"], strict=True)]
    return {"bounds": list(b["bounds"]), "counts": counts, "sum": a["sum"] + b["sum"], "count": a["count"] + b["count"]}


def subtract_histograms(now: HistogramSnapshot, before: HistogramSnapshot) -> HistogramSnapshot:
    """The observations made between two cumulative histograms; ``now`` whole when they cannot be compared."""
    counts = [x - y for x, y in zip(now["counts"], before["counts"], strict=False)]
    if now["bounds"] != before["bounds"] or any(n < 0 for n in counts):
        return now
    return {"bounds": list(now["bounds"]), "counts": counts, "sum": now["sum"] - before["sum"], "count": sum(counts)}


def quantile(histogram: HistogramSnapshot | None, q: float) -> float | None:
    """The ``q`` quantile of a histogram estimated as Prometheus' ``histogram_quantile`` does: linear within the
    bucket that holds it (from 0 for the first), the highest finite bound when it falls in +Inf; None when empty."""
    if not histogram:
        return None
    total = sum(histogram["counts"])
    if total == 0:
        return None
    rank = q * total
    seen, lower = 0, 0.0
    for bound, count in zip([*histogram["bounds"], math.inf], histogram["counts"], strict=True):
        if count and seen + count >= rank:
            if math.isinf(bound):
                return float(histogram["bounds"][-1]) if histogram["bounds"] else None
            return lower + (bound - lower) * (rank - seen) / count
        seen += count
        lower = bound
    return None
