"""Per-instance counters and histograms, kept in the replica and shipped as plain snapshots.

Pure Python (no Ray, no prometheus_client): the replica records into it on its event loop and pushes
``snapshot()``, a ``contracts.snapshot.InstanceSnapshot``. Counters and histogram buckets are cumulative, as
Prometheus expects.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from orchestrator.contracts.snapshot import HistogramSnapshot, InstanceSnapshot

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class Histogram:
    """Cumulative-style histogram: per-bucket counts (last bucket is +Inf), sum and count."""

    bounds: Sequence[float]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def snapshot(self) -> HistogramSnapshot:
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.total, "count": self.count}


class InstanceMetrics:
    """What one instance has done since it started."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.started_at = clock()
        self.requests: Counter[str] = Counter()  # by route
        self.failures: Counter[str] = Counter()  # by error type
        self.embeddings = 0
        self.tokens = 0
        self.in_flight = 0
        self.queue_s = Histogram(LATENCY_BUCKETS_S)
        self.inference_s = Histogram(LATENCY_BUCKETS_S)
        self.request_s = Histogram(LATENCY_BUCKETS_S)
        self.batch_texts = Histogram(BATCH_SIZE_BUCKETS)
        self.batch_s = Histogram(LATENCY_BUCKETS_S)
        self.padded_tokens = 0

    def request_started(self, route: str) -> None:
        self.requests[route] += 1
        self.in_flight += 1

    def request_abandoned(self) -> None:
        """A request cancelled before it had an outcome (its client went away): it only leaves the in-flight count."""
        self.in_flight = max(0, self.in_flight - 1)

    def request_finished(
        self,
        seconds: float,
        *,
        error_type: str | None = None,
        embeddings: int = 0,
        tokens: int = 0,
        queue_s: float | None = None,
        inference_s: float | None = None,
    ) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        self.request_s.observe(seconds)
        if error_type is not None:
            self.failures[error_type] += 1
            return
        self.embeddings += embeddings
        self.tokens += tokens
        if queue_s is not None:
            self.queue_s.observe(queue_s)
        if inference_s is not None:
            self.inference_s.observe(inference_s)

    def batch_done(self, texts: int, padded_tokens: int, seconds: float) -> None:
        self.batch_texts.observe(texts)
        self.batch_s.observe(seconds)
        self.padded_tokens += padded_tokens

    def snapshot(self, **gauges: float | int | None) -> InstanceSnapshot:
        """A JSON-able snapshot; ``gauges`` adds point-in-time values (load, queue length, memory)."""
        return {
            "time": self._clock(),
            "started_at": self.started_at,
            "requests": dict(self.requests),
            "failures": dict(self.failures),
            "embeddings": self.embeddings,
            "tokens": self.tokens,
            "padded_tokens": self.padded_tokens,
            "in_flight": self.in_flight,
            "histograms": {
                "queue_seconds": self.queue_s.snapshot(),
                "inference_seconds": self.inference_s.snapshot(),
                "request_seconds": self.request_s.snapshot(),
                "batch_size": self.batch_texts.snapshot(),
                "batch_seconds": self.batch_s.snapshot(),
            },
            "gauges": dict(gauges),
        }
