"""The metrics hub: one small Ray actor that holds every instance's latest metrics snapshot.

Replicas push a snapshot about once a second (off the request path); whichever replica answers ``/metrics``,
``/instances`` or the dashboard asks the hub, so one endpoint shows every instance. Rates (embeddings and tokens
per second) are computed here from the difference between an instance's last two snapshots.

The hub is also the registry of direct lanes: each push carries where the replica's lane listens (if it has one),
and the front door reads ``lanes()`` to connect (``orchestrator/frontdoor/lanes.py``). Pushing it every time keeps
the registry whole across a hub restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from orchestrator.contracts.snapshot import HUB_NAME, HUB_NAMESPACE, InstanceSnapshot, LaneAddress
from orchestrator.metrics import InstanceReport

RATE_KEYS = {"embeddings": "embeddings_per_second", "tokens": "tokens_per_second"}  # counter -> its rate


class MetricsHub:
    """Latest snapshot and rates per instance (a plain class; ``start_hub`` runs it as a Ray actor)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._latest: dict[str, tuple[dict[str, str], InstanceSnapshot, dict[str, float]]] = {}
        self._lanes: dict[str, dict[str, Any]] = {}

    def push(self, labels: dict[str, str], snapshot: InstanceSnapshot, lane: LaneAddress | None = None) -> None:
        """Store an instance's snapshot (rates come from the previous one of the same instance) and, when given,
        where its replica's direct lane listens."""
        name = labels["instance"]
        if lane is not None:
            self._lanes[name] = {"instance": name, **lane}
        rates = {key: 0.0 for key in RATE_KEYS.values()}
        previous = self._latest.get(name)
        if previous is not None:
            _, before, last_rates = previous
            elapsed = snapshot["time"] - before["time"]
            if snapshot.get("started_at") != before.get("started_at"):
                rates = {key: 0.0 for key in RATE_KEYS.values()}  # restarted replica: counters began again
            elif elapsed > 0:
                rates = {rate: (snapshot[key] - before[key]) / elapsed for key, rate in RATE_KEYS.items()}
            else:
                rates = last_rates
        self._latest[name] = (labels, snapshot, rates)

    def lanes(self) -> list[dict[str, Any]]:
        """The latest lane registered per instance (a replaced replica's entry is overwritten by its successor)."""
        return [dict(lane) for _, lane in sorted(self._lanes.items())]

    def reports(self) -> list[InstanceReport]:
        """Every instance that ever reported, in name order, with the age of its last snapshot."""
        now = self._clock()
        return [
            InstanceReport(labels=labels, snapshot=snapshot, rates=rates, age_s=now - snapshot["time"])
            for _, (labels, snapshot, rates) in sorted(self._latest.items())
        ]


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
