"""The metrics hub: one small Ray actor that holds every instance's latest metrics snapshot.

Replicas push a snapshot about once a second (off the request path); whichever replica answers ``/metrics``,
``/instances`` or the dashboard asks the hub, so one endpoint shows every instance. Rates (embeddings and tokens
per second) are computed here from the difference between an instance's last two snapshots.

The hub also remembers what one snapshot cannot tell:

- **replaced replicas**: an instance whose snapshot comes with a new ``started_at`` is a new replica whose counters
  began again; the last snapshot of the one it replaced is added to the instance's ``CarriedCounters``, so the
  totals of ``/instances`` never go down (``/metrics`` keeps per-replica counters, which Prometheus expects to reset).
  A late push from the replaced replica (an older ``started_at``) is ignored, so two replicas of one instance can
  never be counted in turn. The hub lives as long as ``up``; if Ray restarts the actor, what it carried is lost;
- **the last minute**: one point a second per instance (throughput, load, latency histograms), from which the
  dashboard draws its charts at once and the latencies of the last minute are computed.

The hub is also the registry of direct lanes: each push carries where the replica's lane listens (if it has one),
and the front door reads ``lanes()`` to connect (``orchestrator/frontdoor/lanes.py``). Pushing it every time keeps
the registry whole across a hub restart.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from orchestrator.contracts.snapshot import (
    HISTORY_POINTS,
    HISTORY_S,
    HUB_NAME,
    HUB_NAMESPACE,
    LATENCY_KEYS,
    CarriedCounters,
    HistogramSnapshot,
    HistoryPoint,
    InstanceReport,
    InstanceSnapshot,
    LaneAddress,
    lifetime,
    subtract_histograms,
)

RATE_KEYS = {"embeddings": "embeddings_per_second", "tokens": "tokens_per_second"}  # counter -> its rate
SAMPLE_EVERY_S = 0.9  # replicas push every second and before each /instances answer: one point a second is enough


class _Sample(NamedTuple):
    point: HistoryPoint  # its time is the hub's: replicas on other nodes have other clocks, the charts one axis
    taken: float  # the snapshot's own time, for the throughput between two points
    embeddings: int  # since the service started (carried included), for the throughput between two points
    latency: dict[str, HistogramSnapshot]  # likewise, for the latencies of the last minute


@dataclass
class _Instance:
    labels: dict[str, str]
    snapshot: InstanceSnapshot
    rates: dict[str, float]
    carried: CarriedCounters = field(default_factory=CarriedCounters)
    # Oldest first; the first sample is the newest one at least HISTORY_S old once there is a minute of them.
    samples: deque[_Sample] = field(default_factory=deque)


def _no_rates() -> dict[str, float]:
    return {key: 0.0 for key in RATE_KEYS.values()}


class MetricsHub:
    """Latest snapshot, rates, carried counters and last minute per instance (a plain class; ``start_hub`` runs it
    as a Ray actor)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._instances: dict[str, _Instance] = {}
        self._lanes: dict[str, dict[str, Any]] = {}

    def push(self, labels: dict[str, str], snapshot: InstanceSnapshot, lane: LaneAddress | None = None) -> None:
        """Store an instance's snapshot (rates come from the previous one of the same replica; a new replica's
        predecessor's counters are carried) and, when given, where its replica's direct lane listens."""
        name = labels["instance"]
        if lane is not None:
            self._lanes[name] = {"instance": name, **lane}
        known = self._instances.get(name)
        if known is None:
            known = self._instances[name] = _Instance(labels, snapshot, _no_rates())
        else:
            before = known.snapshot
            if snapshot["started_at"] < before["started_at"]:
                return  # the replaced replica, late: its counters were carried as it last reported them
            elapsed = snapshot["time"] - before["time"]
            if snapshot["started_at"] != before["started_at"]:
                known.carried = known.carried.plus(before)
                known.rates = _no_rates()  # a new replica: its counters began again
            elif elapsed > 0:
                known.rates = {rate: (snapshot[key] - before[key]) / elapsed for key, rate in RATE_KEYS.items()}
            known.labels, known.snapshot = labels, snapshot
        _sample(known, self._clock())

    def lanes(self) -> list[dict[str, Any]]:
        """The latest lane registered per instance (a replaced replica's entry is overwritten by its successor)."""
        return [dict(lane) for _, lane in sorted(self._lanes.items())]

    def reports(self) -> list[InstanceReport]:
        """Every instance that ever reported, in name order, with the age of its last snapshot."""
        now = self._clock()
        return [_report(instance, now) for _, instance in sorted(self._instances.items())]


def _sample(instance: _Instance, now: float) -> None:
    """Add a point for the instance's latest snapshot (at most one a second) and forget points over a minute old,
    keeping one just older than a minute as the base of the latency window."""
    snapshot, samples = instance.snapshot, instance.samples
    if samples and now - samples[-1].point.time < SAMPLE_EVERY_S:
        return
    total = lifetime(instance.carried, snapshot)
    throughput = None
    if samples and snapshot["time"] > samples[-1].taken:
        previous = samples[-1]
        throughput = max(0.0, (total["embeddings"] - previous.embeddings) / (snapshot["time"] - previous.taken))
    load = snapshot.get("gauges", {}).get("load")
    point = HistoryPoint(now, throughput, None if load is None else float(load))
    latency = {key: total["histograms"][key] for key in LATENCY_KEYS if key in total["histograms"]}
    samples.append(_Sample(point, snapshot["time"], total["embeddings"], latency))
    while len(samples) > 1 and samples[1].point.time <= now - HISTORY_S:
        samples.popleft()


def _report(instance: _Instance, now: float) -> InstanceReport:
    snapshot, samples = instance.snapshot, instance.samples
    recent, recent_s = None, None
    if samples and samples[0].point.time <= samples[-1].point.time - HISTORY_S:
        base = samples[0]
        histograms = lifetime(instance.carried, snapshot)["histograms"]
        recent = {
            key: subtract_histograms(histograms[key], base.latency[key]) if key in base.latency else histograms[key]
            for key in LATENCY_KEYS
            if key in histograms
        }
        recent_s = samples[-1].point.time - base.point.time
    return InstanceReport(
        labels=instance.labels,
        snapshot=snapshot,
        rates=instance.rates,
        age_s=now - snapshot["time"],
        carried=instance.carried,
        history=tuple(sample.point for sample in samples)[-HISTORY_POINTS:],
        recent=recent,
        recent_s=recent_s,
    )


_hub_handle: Any = None


def start_hub() -> Any:
    """Create the hub actor (or return the running one).

    The handle is kept for the life of this process: a non-detached actor dies when its last handle goes away,
    and the hub must live as long as the ``up`` that started it.
    """
    import ray

    global _hub_handle
    actor = ray.remote(num_cpus=0, max_restarts=-1)(MetricsHub)
    _hub_handle = actor.options(name=HUB_NAME, namespace=HUB_NAMESPACE, get_if_exists=True).remote()
    return _hub_handle


def find_hub() -> Any | None:
    """The running hub actor, or None (the front door then shows no instance's series)."""
    import ray

    try:
        return ray.get_actor(HUB_NAME, namespace=HUB_NAMESPACE)
    except ValueError:
        return None
