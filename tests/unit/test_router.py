"""The Serve router driven directly with fake replicas and a fake clock (no cluster)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from ray.serve._private.common import DeploymentHandleSource, DeploymentID, ReplicaID

from orchestrator.serving.router import WeightedLoadRouter

DEPLOYMENT = DeploymentID(name="EmbeddingReplica", app_name="embeddings")


@dataclass
class FakeReplica:
    name: str
    load: float = 0.0
    capacity: int = 8
    max_ongoing_requests: int = 100
    routing_stats: dict[str, Any] = field(default_factory=dict)
    replica_metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.replica_id = ReplicaID(unique_id=self.name, deployment_id=DEPLOYMENT)
        self.routing_stats = {"load": self.load}
        self.replica_metadata = {"capacity": self.capacity}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_router(clock: Clock, **kwargs: float) -> WeightedLoadRouter:
    router = WeightedLoadRouter(
        deployment_id=DEPLOYMENT, handle_source=DeploymentHandleSource.PROXY, get_curr_time_s=clock
    )
    router.initialize_state(**kwargs)
    return router


async def first_choice(router: WeightedLoadRouter, replicas: list[FakeReplica]) -> str:
    ranks = await router.choose_replicas(replicas)  # type: ignore[arg-type]
    assert all(len(group) == 1 for group in ranks) and len(ranks) == len(replicas)
    return ranks[0][0].replica_id.unique_id


async def test_ranks_every_replica_lowest_score_first(clock: Clock) -> None:
    router = make_router(clock)
    replicas = [FakeReplica("busy", load=0.9), FakeReplica("idle", load=0.1), FakeReplica("mid", load=0.5)]
    ranks = await router.choose_replicas(replicas)  # type: ignore[arg-type]
    assert [group[0].replica_id.unique_id for group in ranks] == ["idle", "mid", "busy"]


async def test_concurrent_decisions_spread_thanks_to_reservations(clock: Clock) -> None:
    router = make_router(clock)
    replicas = [FakeReplica("a"), FakeReplica("b")]
    # Four routing tasks decide before any request is sent: they must not all pick the same idle replica.
    choices = [await first_choice(router, replicas) for _ in range(4)]
    assert sorted(choices) == ["a", "a", "b", "b"]


async def test_reservations_expire_when_no_send_follows(clock: Clock) -> None:
    router = make_router(clock, reservation_ttl_s=1.0)
    replicas = [FakeReplica("a"), FakeReplica("b")]
    assert await first_choice(router, replicas) == "a"
    assert await first_choice(router, replicas) == "b"
    clock.now += 1.5
    assert await first_choice(router, replicas) == "a"


async def test_outstanding_requests_follow_send_and_completion(clock: Clock) -> None:
    router = make_router(clock)
    a, b = FakeReplica("a"), FakeReplica("b")
    for _ in range(3):
        assert await first_choice(router, [a, b]) in {"a", "b"}
    # Send three to "a" (consuming its reservations; the others expire).
    for _ in range(3):
        router.on_send_request(a.replica_id)
    clock.now += 2
    assert await first_choice(router, [a, b]) == "b"
    router.on_send_request(b.replica_id)
    for _ in range(3):
        router.on_request_completed(a.replica_id, "req")
    assert await first_choice(router, [a, b]) == "a"


async def test_capacity_from_metadata_weighs_unequal_replicas(clock: Clock) -> None:
    router = make_router(clock)
    small, big = FakeReplica("1g", capacity=8), FakeReplica("3g", capacity=24)
    for _ in range(3):
        router.on_send_request(big.replica_id)
    router.on_send_request(small.replica_id)
    # 3/24 < 1/8 is false (equal): add one more to the small one and the big one wins.
    router.on_send_request(small.replica_id)
    assert await first_choice(router, [small, big]) == "3g"


async def test_load_reported_by_replicas_counts(clock: Clock) -> None:
    router = make_router(clock, load_weight=1.0, queue_weight=0.0)
    assert await first_choice(router, [FakeReplica("hot", load=0.8), FakeReplica("cool", load=0.2)]) == "cool"


async def test_dead_replica_state_is_forgotten(clock: Clock) -> None:
    router = make_router(clock)
    a, _b = FakeReplica("a"), FakeReplica("b")
    for _ in range(5):
        router.on_send_request(a.replica_id)
    router.on_replica_actor_died(a.replica_id)
    assert router.instance_load(a, clock.now).outstanding == 0  # type: ignore[arg-type]


async def test_no_candidates(clock: Clock) -> None:
    assert await make_router(clock).choose_replicas([]) == []
