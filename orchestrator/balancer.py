"""The seed's load-and-queue weighted balancer, as pure functions of numbers.

``score = load_weight * load + queue_weight * queue`` and the lowest score wins, the request being placed counted in
the queue of each candidate (``rank``). Both terms are fractions of the instance's own capacity so that the weights
mean what they say and unequal instances (a 3g slice next to a 1g slice, a 2-thread pool next to a 1-thread pool)
compare fairly:

* ``load`` is the busy fraction the replica measures itself (time its model spent computing over a recent window),
  in [0, 1];
* ``queue`` is the work outstanding at the replica (requests sent and not finished, plus routing decisions made but
  not yet sent) divided by the number of requests it is sized to hold, so a replica twice as big looks half as full
  with the same queue.

Two more policies live here so that every routing decision is in one place and testable with numbers:
``faded_load`` (how a reported busy fraction ages while nothing of ours runs on the instance) and ``spread``
(which node of a cluster gets the next request when Serve routes inside each node).

Pure: numbers in, a choice out; no clock, no I/O, no Ray. Whoever routes (a transport of the front door, or our
router inside Serve) counts its own outstanding requests and passes them in.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple


class Weights(NamedTuple):
    """Weights of the two terms of the score: 0.2/0.8 by default (docs/balancer-study.md); the seed used 0.7/0.3.

    A named tuple: the config gives it as ``(load_weight, queue_weight)`` and Serve's router takes it as keywords."""

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


def score(instance: InstanceLoad, weights: Weights, placing: float = 0.0) -> float:
    """The seed's score with the queue normalised by capacity; lower is better. ``placing`` more requests are
    counted in the queue (``rank`` counts the one it places)."""
    load = min(max(instance.load, 0.0), 1.0)
    queue = (max(instance.outstanding, 0.0) + placing) / max(instance.capacity, 1e-9)
    return weights.load_weight * load + weights.queue_weight * queue


def rank(instances: Iterable[InstanceLoad], weights: Weights, placing: float = 1.0) -> list[InstanceLoad]:
    """Instances from best (lowest score with the request being placed counted on it) to worst.

    Counting the request being placed (``placing=1``) makes the queue term the work ahead of it *and its own*, per
    unit of capacity: an idle 3g slice (1/21) beats an idle 1g slice (1/7), and still beats it with one request
    ahead (2/21). Without it (``placing=0``, the seed's ranking) every idle instance scores 0 whatever its size, so
    a front door that sees none of its own requests anywhere (one of several front doors, each counting only its
    own) is steered by the stale load term alone (docs/balancer-study.md, "Many front doors").

    Ties go to the instance with the most free capacity, then to the input order, so that equal idle instances are
    not all sent to the first one when combined with the router's reservations.
    """
    indexed: Sequence[tuple[int, InstanceLoad]] = list(enumerate(instances))
    return [
        item
        for _, item in sorted(
            indexed,
            key=lambda pair: (
                score(pair[1], weights, placing),
                -(pair[1].capacity - pair[1].outstanding),
                pair[0],
            ),
        )
    ]


def choose(instances: Iterable[InstanceLoad], weights: Weights, placing: float = 1.0) -> InstanceLoad | None:
    """The best instance (``rank``'s first), or None when there is none."""
    ranked = rank(instances, weights, placing)
    return ranked[0] if ranked else None


def faded_load(load: float, age_s: float, window_s: float, outstanding: int) -> float:
    """A reported busy fraction as the balancer should see it now.

    While requests of ours run on the instance the report is the freshest truth there is. With none running, the
    instance is idling as far as we know, and the replica's own measure (busy time over the last ``window_s``) fades
    as that window slides past the report: ``load * (1 - age / window)``, 0 after a whole window.
    """
    if outstanding > 0:
        return load
    return load * max(0.0, 1.0 - age_s / window_s)


def spread(outstanding: Sequence[int], capacity: Sequence[float], running: Sequence[bool]) -> int:
    """Index of the node that gets the next request: the least outstanding requests per unit of capacity among nodes
    with a running instance (all nodes if none has one); ties to the first. Counting one more request (the one being
    placed) keeps an idle small node from winning over an idle big one."""
    candidates = [n for n, up in enumerate(running) if up] or list(range(len(outstanding)))
    return min(candidates, key=lambda n: ((outstanding[n] + 1) / max(capacity[n], 1.0), n))
