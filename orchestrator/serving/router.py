"""The Ray Serve request router that applies our balancer (``orchestrator/balancer.py``) in Serve's routing path.

It runs in every process holding a handle to the deployment (the front door's, in ``orchestrator up``). For each
request it ranks every replica by the seed's score and returns the ranking, so Serve tries the best first and falls
back in order. Its inputs:

* ``load``: the busy fraction each replica reports through ``record_routing_stats`` (refreshed every stats period);
* outstanding requests, counted here: +1 when Serve sends a request, -1 when it completes;
* reservations: several routing tasks can decide before Serve has sent anything, and would all pick the same idle
  replica; so each decision reserves a slot on its choice until the send is seen, or until the reservation expires
  (the request went to a fallback replica or was cancelled);
* ``capacity`` from the replica's metadata (requests it is sized to hold), so unequal replicas compare fairly.
"""

from __future__ import annotations

from collections import defaultdict, deque
from typing import Any

from ray.serve.request_router import FIFOMixin, PendingRequest, ReplicaID, RequestRouter, RunningReplica

from orchestrator.balancer import InstanceLoad, Weights, rank


class WeightedLoadRouter(FIFOMixin, RequestRouter):
    """Lowest ``load_weight * load + queue_weight * outstanding / capacity`` first."""

    def initialize_state(
        self, load_weight: float = 0.2, queue_weight: float = 0.8, reservation_ttl_s: float = 1.0, **_: Any
    ) -> None:
        self._weights = Weights(load_weight=load_weight, queue_weight=queue_weight)
        self._reservation_ttl_s = reservation_ttl_s
        self._outstanding: dict[ReplicaID, int] = defaultdict(int)
        self._reservations: dict[ReplicaID, deque[float]] = defaultdict(deque)

    def _live_reservations(self, replica_id: ReplicaID, now: float) -> int:
        queue = self._reservations.get(replica_id)
        if not queue:
            return 0
        while queue and queue[0] + self._reservation_ttl_s <= now:
            queue.popleft()
        return len(queue)

    def instance_load(self, replica: RunningReplica, now: float) -> InstanceLoad:
        """What the balancer sees of one replica now."""
        stats = replica.routing_stats or {}
        metadata = replica.replica_metadata or {}
        capacity = float(metadata.get("capacity") or replica.max_ongoing_requests or 1)
        outstanding = self._outstanding.get(replica.replica_id, 0) + self._live_reservations(replica.replica_id, now)
        return InstanceLoad(
            key=replica.replica_id, load=float(stats.get("load", 0.0)), outstanding=outstanding, capacity=capacity
        )

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        now = self._get_curr_time_s()
        by_id = {replica.replica_id: replica for replica in candidate_replicas}
        ranked = rank((self.instance_load(replica, now) for replica in candidate_replicas), self._weights)
        self._reservations[ranked[0].key].append(now)  # type: ignore[index]
        return [[by_id[item.key]] for item in ranked]  # type: ignore[index]

    def on_send_request(self, replica_id: ReplicaID) -> None:
        super().on_send_request(replica_id)
        queue = self._reservations.get(replica_id)
        if queue:
            queue.popleft()
        self._outstanding[replica_id] += 1

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        super().on_request_completed(replica_id, internal_request_id)
        if self._outstanding.get(replica_id, 0) > 0:
            self._outstanding[replica_id] -= 1

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._outstanding.pop(replica_id, None)
        self._reservations.pop(replica_id, None)
