"""The seed's load-and-queue weighted balancer, as pure functions of numbers.

``score = load_weight * load + queue_weight * queue`` and the lowest score wins. Both terms are fractions of the
instance's own capacity so that the weights mean what they say and unequal instances (a 3g slice next to a 1g slice,
a 2-thread pool next to a 1-thread pool) compare fairly:

* ``load`` is the busy fraction the replica measures itself (time its model spent computing over a recent window),
  in [0, 1];
* ``queue`` is the work outstanding at the replica (requests sent and not finished, plus routing decisions made but
  not yet sent) divided by the number of requests it is sized to hold, so a replica twice as big looks half as full
  with the same queue.

Nothing here imports Ray. The front door's ``orchestrator/direct_forwarder.py`` feeds these functions (direct lanes,
the default), and ``orchestrator/router.py`` from Serve's routing path (``server.transport: serve``).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Weights:
    """Weights of the two terms of the score: 0.2/0.8 by default (docs/balancer-study.md); the seed used 0.7/0.3."""

    load_weight: float = 0.2
    queue_weight: float = 0.8


@dataclass(frozen=True)
class InstanceLoad:
    """What the balancer knows about one instance at decision time.

    Attributes:
        key: the instance's identity (a replica id in Serve, a name in tests).
        load: busy fraction in [0, 1] reported by the replica (stale by up to one stats period).
        outstanding: requests routed to it and not yet finished, counted by the router (fresh).
        capacity: requests the instance is sized to hold at once (> 0); bigger slices hold more.
    """

    key: Hashable
    load: float
    outstanding: float
    capacity: float


def score(instance: InstanceLoad, weights: Weights) -> float:
    """The seed's score with the queue normalised by capacity; lower is better."""
    load = min(max(instance.load, 0.0), 1.0)
    queue = max(instance.outstanding, 0.0) / max(instance.capacity, 1e-9)
    return weights.load_weight * load + weights.queue_weight * queue


def rank(instances: Iterable[InstanceLoad], weights: Weights) -> list[InstanceLoad]:
    """Instances from best (lowest score) to worst.

    Ties go to the instance with the most free capacity, then to the input order, so that equal idle instances are
    not all sent to the first one when combined with the router's reservations.
    """
    indexed: Sequence[tuple[int, InstanceLoad]] = list(enumerate(instances))
    return [
        item
        for _, item in sorted(
            indexed,
            key=lambda pair: (
                score(pair[1], weights),
                -(pair[1].capacity - pair[1].outstanding),
                pair[0],
            ),
        )
    ]


def choose(instances: Iterable[InstanceLoad], weights: Weights) -> InstanceLoad | None:
    """The best instance, or None when there is none."""
    ranked = rank(instances, weights)
    return ranked[0] if ranked else None
