"""What a replica tells the metrics hub: the typed snapshot of one instance, where its lane listens, and the name
under which the hub actor is found.

A replica builds an ``InstanceSnapshot`` (``workers/instance_metrics.py``) and pushes it about once a second with
its identity labels and its ``LaneAddress``; the control plane reads snapshots back to render ``/metrics`` and
``/instances``. Counters and histogram buckets are cumulative since ``started_at``, as Prometheus expects.
"""

from __future__ import annotations

from typing import TypedDict

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
